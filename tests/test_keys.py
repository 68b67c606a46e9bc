"""The key map: namespaces that cannot collide, whatever ids clients choose."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from llm_gateway import keys

# Ids a client may send (TaskId allows ":"), chosen to look like other keys' namespaces and suffixes.
IDS = ["v", "v:lock", "lock", "lock:v", "lock:conversation:v", "conversation:v", "watched:x", "tracked", ":", ""]

VALUE_NAMESPACES = tuple(namespace.prefix for namespace in keys.VALUE_NAMESPACES)


@pytest.mark.parametrize(
    ("namespaces", "constants"),
    [(VALUE_NAMESPACES, keys.VALUE_CONSTANTS), (keys.REDIS_NAMESPACES, keys.REDIS_CONSTANTS)],
)
def test_no_namespace_is_a_prefix_of_another(namespaces: tuple[str, ...], constants: tuple[str, ...]) -> None:
    for a, b in itertools.permutations(namespaces, 2):
        assert not b.startswith(a), (a, b)
    for constant, namespace in itertools.product(constants, namespaces):
        assert not constant.startswith(namespace), (constant, namespace)
    assert len(set(namespaces + constants)) == len(namespaces + constants)


def test_value_keys_of_different_kinds_or_ids_never_meet() -> None:
    built = [build(id_) for build in keys.VALUE_NAMESPACES for id_ in IDS] + [keys.TRELLIS_TRACKED]
    assert len(set(built)) == len(built)


def test_a_conversation_and_its_lock_are_apart_from_every_other_conversation() -> None:
    assert keys.conversation("v:lock") != keys.conversation_lock("v")
    assert keys.conversation("lock:v") != keys.conversation_lock("v")
    assert keys.conversation_lock("v:lock") != keys.conversation("v")


def test_the_redis_layout() -> None:
    layout = keys.RedisKeys("llmgw:")
    assert layout.task("t") == "llmgw:{t}:task" and layout.events("t") == "llmgw:{t}:events"
    assert layout.value(keys.conversation("c")) == "llmgw:kv:conversation:c"
    assert layout.leases(3) == "llmgw:leases:{3}" and layout.cancel == "llmgw:cancel"
    assert layout.wake("r1") == "llmgw:wake:r1"
    redis_keys: list[Callable[[str], str]] = [layout.task, layout.events, layout.wake, layout.value]
    built = [build(id_) for build in redis_keys for id_ in IDS] + [layout.leases(shard) for shard in range(16)]
    assert len(set(built)) == len(built)


@pytest.mark.parametrize("task_id", [id_ for id_ in IDS if id_] + ["3b241101-e2bb-4255-8caf-4136c566a962"])
def test_the_keys_of_one_task_share_its_hash_slot(task_id: str) -> None:
    layout = keys.RedisKeys("llmgw:")
    assert key_slot(layout.task(task_id).encode()) == key_slot(layout.events(task_id).encode())
    assert key_slot(layout.task(task_id).encode()) == key_slot(task_id.encode()), "the task id is the hash tag"
