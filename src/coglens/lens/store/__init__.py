"""The lens database: the records a run writes (``records``, ``rows``, ``codec``), its tables and connections
(``schema``, ``connection``), the writer contract (``writer``; resume rules in ``resume``) with its two formats
(``coglens_db``, ``vlmlens_db``, named and picked in ``formats``, light to import) and a background writer thread
(``sink``), and what reads a database back (``reader``, ``export``, ``merge``). Errors the CLI prints without a
traceback: ``errors``."""
