"""Named instances: which account owns each, its session, and the lock that orders its updates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from service import errors
from service.auth import Principal, Scope
from service.sessions.base import Session


@dataclass(eq=False)
class Instance:
    """One linked WhatsApp account as the gateway serves it."""

    name: str
    account: str
    session: Session
    #: Held for a whole update, so updates to one instance run one at a time in arrival order
    #: (asyncio.Lock wakes its waiters first-in, first-out).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Whether this process may act on the instance now. Always, for one process; between
    #: replicas, only while it holds the instance's lease (``service.cluster``): checked before
    #: every read and every stanza, so a replica resumed after a stall sends nothing.
    serving: Callable[[], bool] = field(default=lambda: True)


class InstanceDirectory:
    """All configured instances, and the rule for who may act on which."""

    def __init__(self, instances: Iterable[Instance]) -> None:
        self._by_name: dict[str, Instance] = {}
        for instance in instances:
            if instance.name in self._by_name:
                raise ValueError(f"duplicate instance name {instance.name!r}")
            self._by_name[instance.name] = instance

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Instance | None:
        return self._by_name.get(name)

    def authorize(self, principal: Principal, name: str) -> Instance:
        """The instance ``name`` if ``principal`` may act on it.

        An instance token is refused for any other name before existence is checked, so it learns
        nothing about other instances; an account token learns only whether a name exists.
        """
        if not name:
            raise errors.INSTANCE_REQUIRED.error(
                violations=(errors.Violation("instance", "must name a configured instance"),)
            )
        if principal.scope is Scope.INSTANCE and principal.name != name:
            raise errors.INSTANCE_FORBIDDEN.error(instance=name)
        instance = self._by_name.get(name)
        if instance is None:
            raise errors.INSTANCE_NOT_FOUND.error(instance=name)
        if instance.account != principal.account:
            raise errors.INSTANCE_FORBIDDEN.error(instance=name)
        return instance

    def visible_to(self, principal: Principal) -> list[Instance]:
        """The instances ``principal`` may see, in configuration order."""
        if principal.scope is Scope.INSTANCE:
            return [i for i in self if i.name == principal.name]
        return [i for i in self if i.account == principal.account]
