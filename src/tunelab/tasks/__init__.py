"""The task catalogue: importing this package (which importing any `tunelab.tasks.…` module does first)
registers every built-in task, so `tunelab.tasks.registry.get_task` knows them all."""
from tunelab.tasks import reading  # noqa: F401
from tunelab.tasks import arithmetic  # noqa: F401
from tunelab.tasks import squad  # noqa: F401
from tunelab.tasks import choice  # noqa: F401
from tunelab.tasks import glue  # noqa: F401
from tunelab.tasks import rougel  # noqa: F401
from tunelab.tasks import ppl  # noqa: F401
from tunelab.tasks import continuation  # noqa: F401
from tunelab.tasks import knowledge  # noqa: F401
from tunelab.tasks import base_agreement  # noqa: F401
from tunelab.tasks import instructions  # noqa: F401
from tunelab.tasks import forms  # noqa: F401
