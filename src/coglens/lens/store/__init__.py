"""The lens database: the records a run writes (``records``, ``rows``, ``codec``), its tables and connections
(``schema``, ``connection``), the writer contract (``writer``; resume rules in ``resume``) with its two formats
(``coglens_db``, ``vlmlens_db``, picked in ``formats``) and a background writer thread (``sink``), and what
reads a database back (``reader``, ``export``, ``merge``). Errors the CLI prints without a traceback: ``errors``."""
