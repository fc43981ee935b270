"""``python -m streamlab.apps._uvicorn_main ARGS`` is ``uvicorn ARGS`` whose workers die with it.

uvicorn ``--workers N`` starts its workers with multiprocessing "spawn" from the
supervisor's main thread. A spawned child re-imports the parent's main module under
the name ``__mp_main__`` (unless it is a ``__main__`` module such as
``uvicorn.__main__``), before it unpickles its target: so running the supervisor
from this module gets one line of our code into every worker, which ties the worker
to the supervisor (``PR_SET_PDEATHSIG`` SIGKILL, see ``streamlab/_lifetime.py``).
The supervisor itself is tied to the notebook/test process by ``streamlab._lifetime.popen``.

Nothing in ``streamlab`` imports this module (``python -m`` of a module that is
already imported warns).
"""

import os

from streamlab._lifetime import PARENT_ENV, tie_to

if __name__ == "__main__":
    import sys

    from uvicorn.main import main

    os.environ[PARENT_ENV] = str(os.getpid())  # the spawned workers' environment is a copy of ours
    sys.argv[0] = "uvicorn"
    main()
elif __name__ == "__mp_main__" and os.environ.get(PARENT_ENV):
    tie_to(int(os.environ[PARENT_ENV]))
