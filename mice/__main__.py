from mice.cli import main

main()
