"""The application on top of the library: the ``softmargin`` command (train, evaluate, predict, compare, bench),
data readers, the trainer and the scikit-learn estimator. The library (everything outside this package) never
imports it; it needs the ``app`` extra (``pip install "softmargin[app]"``)."""
