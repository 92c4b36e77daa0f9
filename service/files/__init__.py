"""The service's files under ``$SYNCBN_HOME``: the one upload flow (``uploads``), datasets
(``datasets``), code bundles (``code_bundles``, read within budgets by ``bundle_archives``),
trained model files and predictions (``trained_models``), and durable writes, sweeping and
removal (``housekeeping``)."""
