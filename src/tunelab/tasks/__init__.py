"""Built-in tasks; importing this package registers them."""
from tunelab.tasks import reading  # noqa: F401
from tunelab.tasks import arithmetic  # noqa: F401
