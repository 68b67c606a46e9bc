"""Every key the service writes to its store, built here, in namespaces that cannot collide.

A key is a namespace and an id (ids come from clients and may hold any separator), or a constant. No
namespace is a prefix of another, and no constant starts with a namespace, so two keys built here are
equal only if they are the same kind of key for the same id. (``tests/test_keys.py`` checks it.)

Three families: task ids, the app's small values (``Values``), and the Redis store's own layout, under its
prefix, which keeps those values under ``kv:``.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- task ids (the event log's) -------------------------------------------------------------------------------
# Claude task ids are the client's choice (``TaskId``): one could be "trellis:<id>", the log of a Trellis task.
# Left as it is: both ids are part of the API (task ids, the X-Task-Id of a Trellis stream).

TRELLIS_LOG = "trellis:"


def trellis_log(piapi_task_id: str) -> str:
    return TRELLIS_LOG + piapi_task_id


# --- the app's small values -----------------------------------------------------------------------------------

CONVERSATION = "conversation:"  # a conversation's history
CONVERSATION_LOCK = "lock:conversation:"  # held while one turn of it runs
ANSWER = "answer:"  # the task answering a question, by the question's digest
TRELLIS_WATCHED = "trellis:watched:"  # a socket somewhere watched the Trellis task lately
TRELLIS_POLLER = "trellis:poller:"  # the replica that polls the Trellis task
TRELLIS_RECORD = "trellis:record:"  # held while a Trellis status is recorded
TRELLIS_TRACKED = "trellis:tracked"  # the set of Trellis tasks the cluster tracks

VALUE_NAMESPACES = (CONVERSATION, CONVERSATION_LOCK, ANSWER, TRELLIS_WATCHED, TRELLIS_POLLER, TRELLIS_RECORD)
VALUE_CONSTANTS = (TRELLIS_TRACKED,)


def conversation(conversation_id: str) -> str:
    return CONVERSATION + conversation_id


def conversation_lock(conversation_id: str) -> str:
    return CONVERSATION_LOCK + conversation_id


def answer(digest: str) -> str:
    return ANSWER + digest


def trellis_watched(task_id: str) -> str:
    return TRELLIS_WATCHED + task_id


def trellis_poller(task_id: str) -> str:
    return TRELLIS_POLLER + task_id


def trellis_record(task_id: str) -> str:
    return TRELLIS_RECORD + task_id


# --- the Redis store's layout, under its prefix -------------------------------------------------------------

TASK = "task:"  # a task's hash
EVENTS = "events:"  # its event log, a stream
WAKE = "wake:"  # a replica's wake-up stream
VALUE = "kv:"  # the app's small values, as above
RUNNING = "running"  # the lease zset: task id -> deadline
CANCEL = "cancel"  # the channel of cancel requests (channels have a namespace of their own)

REDIS_NAMESPACES = (TASK, EVENTS, WAKE, VALUE)
REDIS_CONSTANTS = (RUNNING,)


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def task(self, task_id: str) -> str:
        return self.prefix + TASK + task_id

    def events(self, task_id: str) -> str:
        return self.prefix + EVENTS + task_id

    def wake(self, replica: str) -> str:
        return self.prefix + WAKE + replica

    def value(self, key: str) -> str:
        return self.prefix + VALUE + key

    @property
    def running(self) -> str:
        return self.prefix + RUNNING

    @property
    def cancel(self) -> str:
        return self.prefix + CANCEL
