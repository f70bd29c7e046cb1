"""Capturing activations: which modules (``modules``), what a hook takes from a module call and keeps
(``trace``: hooks that cannot leak; ``select``: token selection and pooling; ``choices``: their names, light to
import), and one prepared batch through a forward pass or a generation by the engine (``batch``, ``generation``)
turned into store records."""
