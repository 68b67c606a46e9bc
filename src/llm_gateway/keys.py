"""Every key the service writes to its store, built here, in namespaces that cannot collide.

A key is a namespace and an id (ids come from clients and may hold any separator), or a constant. No
namespace is a prefix of another, and no constant starts with a namespace, so two keys built here are
equal only if they are the same kind of key for the same id. (``tests/test_keys.py`` checks it.)

Three families: task ids, the app's small values (``Values``), and the Redis store's own layout, under its
prefix, which keeps those values under ``kv:``. There, a task's own keys are ``{<task id>}:<kind>``, in the
namespace ``{``: the braces make the task id the key's hash tag, so a Redis Cluster keeps every key of one task in
one slot (no task id has braces), and two such keys are equal only if their ids and kinds are (``}:task`` and
``}:events`` end differently). The lease indexes are ``leases:{<shard>}``, each its own hash tag too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Namespace:
    """Builds the keys ``prefix + id``."""

    prefix: str

    def __call__(self, id_: str) -> str:
        return self.prefix + id_


@dataclass(frozen=True)
class TaskKey:
    """Builds the keys ``prefix + "{" + task id + "}:" + kind``: the task id in braces is the key's hash tag."""

    prefix: str
    kind: str

    def __call__(self, task_id: str) -> str:
        return f"{self.prefix}{{{task_id}}}:{self.kind}"


# --- task ids (the event log's) -------------------------------------------------------------------------------
# Claude task ids are the client's choice (``TaskId``), tenant-scoped as ``tenant/id``; neither may hold a "~",
# so no client can name the log of a Trellis task.

trellis_log = Namespace("~trellis:")

# --- the app's small values -----------------------------------------------------------------------------------

conversation = Namespace("conversation:")  # a conversation's history
conversation_lock = Namespace("lock:conversation:")  # held while one turn of it runs
ai_chat = Namespace("ai_chat:")  # an AI SDK chat's messages (UIMessages)
ai_chat_active = Namespace("ai_chat_active:")  # the task generating the chat's answer, until it is kept
ai_chat_lock = Namespace("lock:ai_chat:")  # held while the chat's messages change
answer = Namespace("answer:")  # the task answering a question, by the question's digest
trellis_watched = Namespace("trellis:watched:")  # a socket somewhere watched the Trellis task lately
trellis_poller = Namespace("trellis:poller:")  # the replica that polls the Trellis task
trellis_record = Namespace("trellis:record:")  # held while a Trellis status is recorded
trellis_owner = Namespace("trellis:owner:")  # the tenant that created the Trellis task
TRELLIS_TRACKED = "trellis:tracked"  # the set of Trellis tasks the cluster tracks
tenant_rpm = Namespace("rate:")  # a tenant's requests in one clock minute
tenant_running = Namespace("slots:")  # a tenant's running generations (leased slots)

VALUE_NAMESPACES = (
    conversation,
    conversation_lock,
    ai_chat,
    ai_chat_active,
    ai_chat_lock,
    answer,
    trellis_watched,
    trellis_poller,
    trellis_record,
    trellis_owner,
    tenant_rpm,
    tenant_running,
)
VALUE_CONSTANTS = (TRELLIS_TRACKED,)

# --- the Redis store's layout, under its prefix -------------------------------------------------------------

TASK_TAG = "{"  # how every key of one task starts: its hash tag, then its kind
TASK = "task"  # a task's hash
EVENTS = "events"  # its event log, a stream
WAKE = "wake:"  # a replica's wake-up stream
VALUE = "kv:"  # the app's small values, as above
LEASES = "leases:"  # the lease indexes: zsets of task id -> lease deadline, one per shard (``{<shard>}``)
CANCEL = "cancel"  # the channel of cancel requests (channels have a namespace of their own)
# On a Redis Cluster a task's new events are also published on a sharded channel named as its events stream.

REDIS_NAMESPACES = (TASK_TAG, WAKE, VALUE, LEASES)
REDIS_CONSTANTS: tuple[str, ...] = ()


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.task = TaskKey(prefix, TASK)
        self.events = TaskKey(prefix, EVENTS)
        self.wake = Namespace(prefix + WAKE)
        self.value = Namespace(prefix + VALUE)
        self.cancel = prefix + CANCEL

    def leases(self, shard: int) -> str:
        return f"{self.prefix}{LEASES}{{{shard}}}"
