

def version() -> str:
    """The installed shuiwu's version (pyproject.toml's): ``shuiwu --version`` and ``GET /``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("shuiwu")
    except PackageNotFoundError:  # a source tree run without `make install`
        return "unknown"
