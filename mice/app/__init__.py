"""The demo app: the whole method as cached stages (`mice demo`), the stage runner and the report."""
