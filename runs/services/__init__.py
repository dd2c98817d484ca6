"""Every write of the runs API, one module per concern:

- ``assistants``: create (idempotent), versions, delete;
- ``threads``: create, metadata, copy, delete, prune, a thread's resting status, the end of a
  stateless run's temporary thread;
- ``state``: a new checkpoint from the API, the latest state cached on the thread row;
- ``runs``: create (the API's hottest write), take over a temporary thread, delete;
- ``cancel``: cancelling one run, a thread's or a user's;
- ``crons``: scheduled runs (create, update, delete) and their firing by the workers' sweep;
- ``waiting``: the responses that follow a run to its end (``/wait``, ``/join``, the run streams):
  the run they create, its end read, a client hanging up;
- ``idempotency`` and ``inputs``: the ``Idempotency-Key`` rule and the checks of ids and sizes.

Reads are in ``runs.selectors``. The names below are re-exported so that ``services.thread_get``
and the like keep working for callers that have not moved to the concern modules yet; new code
imports from the concern module (or ``runs.selectors``) itself.
"""

from runs.selectors import (
    EMPTY_STATE,
    assistant_get,
    assistants_search,
    json_filter,
    run_finished_body,
    run_get,
    run_result,
    runs_list,
    state_json,
    thread_config,
    thread_get,
    thread_graph,
    thread_history,
    thread_state,
    threads_search,
)
from runs.services.assistants import (
    assistant_create,
    assistant_create_idempotent,
    assistant_delete,
    assistant_for_run,
    assistant_set_latest,
    assistant_update,
)
from runs.services.cancel import run_cancel, runs_cancel, runs_cancel_many
from runs.services.idempotency import IDEMPOTENCY_KEY_MAX_LENGTH, Idempotency
from runs.services.inputs import check_json_size, parse_uuid
from runs.services.runs import (
    run_create,
    run_create_idempotent,
    run_delete,
    run_delete_checkpoints,
    run_take_temporary_thread,
)
from runs.services.state import thread_state_fields, thread_state_update, thread_store_state
from runs.services.threads import (
    temporary_thread_discard,
    thread_copy,
    thread_create,
    thread_create_idempotent,
    thread_delete,
    thread_refresh_status,
    thread_update,
    threads_prune,
    threads_prune_inactive,
)

__all__ = [
    "EMPTY_STATE",
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "Idempotency",
    "assistant_create",
    "assistant_create_idempotent",
    "assistant_delete",
    "assistant_for_run",
    "assistant_get",
    "assistant_set_latest",
    "assistant_update",
    "assistants_search",
    "check_json_size",
    "json_filter",
    "parse_uuid",
    "run_cancel",
    "run_create",
    "run_create_idempotent",
    "run_delete",
    "run_delete_checkpoints",
    "run_finished_body",
    "run_get",
    "run_result",
    "run_take_temporary_thread",
    "runs_cancel",
    "runs_cancel_many",
    "runs_list",
    "state_json",
    "temporary_thread_discard",
    "thread_config",
    "thread_copy",
    "thread_create",
    "thread_create_idempotent",
    "thread_delete",
    "thread_get",
    "thread_graph",
    "thread_history",
    "thread_refresh_status",
    "thread_state",
    "thread_state_fields",
    "thread_state_update",
    "thread_store_state",
    "thread_update",
    "threads_prune",
    "threads_prune_inactive",
    "threads_search",
]
