"""The one check of the CLI's error contract: exit code 2, exactly one `error:` line naming what it must, no
traceback. Shared by every test that feeds the CLI bad input (subprocess or in-process)."""


def assert_one_error(code, stderr: str, *fragments: str, where: str = "") -> str:
    """Return the error line; fail with `where` and the captured stderr otherwise."""
    where = f"{where}: " if where else ""
    assert code == 2, f"{where}exit {code}, stderr {stderr[-800:]!r}"
    assert "Traceback" not in stderr, f"{where}traceback\n{stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{where}expected one error line, got {stderr.splitlines()!r}"
    for f in fragments:
        assert f in errors[0], f"{where}{errors[0]!r} does not name {f!r}"
    return errors[0]
