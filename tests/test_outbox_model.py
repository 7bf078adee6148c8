"""Outbox against a plain-Python model of a bounded drop-oldest FIFO (hypothesis picks the operations)."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.publish.outbox import Outbox

MAX_MESSAGES = 8
MAX_BYTES = 64

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.integers(1, 30), min_size=1, max_size=12)),
        st.tuples(st.just("ack"), st.integers(0, 20)),  # ack the n-th pending row (if any)
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_outbox_matches_the_model(operations) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.db"
        ob = Outbox(path, max_messages=MAX_MESSAGES, max_bytes=MAX_BYTES)
        model: OrderedDict[int, int] = OrderedDict()  # id -> size, oldest first
        dropped = 0
        try:
            for op, arg in operations:
                if op == "append":
                    ids = ob.append_many([("t", b"x" * size, 1) for size in arg])
                    assert ids == sorted(ids) and (not model or ids[0] > next(reversed(model)))
                    for row_id, size in zip(ids, arg, strict=True):
                        model[row_id] = size
                    # drop the oldest until both bounds hold, never the newest row
                    while len(model) > 1 and (len(model) > MAX_MESSAGES or sum(model.values()) > MAX_BYTES):
                        model.popitem(last=False)
                        dropped += 1
                elif op == "ack":
                    pending = list(model)
                    if pending:
                        victim = pending[arg % len(pending)]
                        ob.ack(victim)
                        del model[victim]
                else:
                    ob.close()
                    ob = Outbox(path, max_messages=MAX_MESSAGES, max_bytes=MAX_BYTES)
                assert [m.id for m in ob.pending(limit=100)] == list(model)
                assert ob.depth() == len(model)
                assert ob.size_bytes() == sum(model.values())
                assert ob.dropped == dropped
        finally:
            ob.close()
