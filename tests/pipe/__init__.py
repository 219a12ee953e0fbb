"""Contract tests of fastpipe.Pipe, run against both implementations (``py`` and ``c``)."""
