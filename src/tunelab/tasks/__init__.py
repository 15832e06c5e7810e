"""Built-in tasks; importing this package registers them."""
from tunelab.tasks import reading  # noqa: F401
from tunelab.tasks import arithmetic  # noqa: F401
from tunelab.tasks import squad  # noqa: F401
from tunelab.tasks import choice  # noqa: F401
from tunelab.tasks import glue  # noqa: F401
from tunelab.eval import rouge  # noqa: F401  (registers the rougel task)
from tunelab.tasks import ppl  # noqa: F401
from tunelab.tasks import continuation  # noqa: F401
