"""The ``coglens extract`` job: a config (``config``) and its inputs (``inputs``) prepared into batches
(``batches``), captured batch by batch and written into a lens database (``runner``), with progress and a summary
(``progress``), one share of the inputs per process under torchrun (``ranks``), and the module list of a model
for writing configs (``discovery``)."""
