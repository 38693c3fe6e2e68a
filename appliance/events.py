"""In-process event bus: the engine publishes, control API subscribers receive.

Topics: ``job`` (a job changed state or progress), ``association`` (opened/closed),
``storage`` (an instance was received), ``drive`` and ``printer`` (status of devices, filled by
their issues), ``alert`` (something an operator must see). Publishing never blocks: a
subscriber that does not keep up loses its oldest events and is told how many it lost.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TOPICS = ("job", "association", "storage", "drive", "printer", "alert")
SUBSCRIBER_BACKLOG = 1000


@dataclass
class Event:
    topic: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "time": self.time, "data": self.data}


class Subscription:
    def __init__(self, bus: EventBus, topics: frozenset[str]) -> None:
        self._bus = bus
        self.topics = topics
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=SUBSCRIBER_BACKLOG)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if event.topic not in self.topics:
            return
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self, topics: frozenset[str] | set[str] | None = None) -> Subscription:
        subscription = Subscription(self, frozenset(topics or TOPICS))
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        event = Event(topic, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.offer(event)
