"""The stored-state byte format: round trips, and every bad value classified, never raised."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from statecast.contract.spec import StateSpec
from statecast.worker.state.codec import (
    HEADER_FIXED_SIZE,
    OFFSET_POS,
    PARTITION_POS,
    ReadStatus,
    StateCodec,
    StoredState,
)

pytestmark = pytest.mark.unit

SPECS = (StateSpec("h", 2, 8), StateSpec("c", 2, 8))
VERSION = "s0123456789ab"


def _state(specs: tuple[StateSpec, ...], offset: int = 7, partition: int = 3) -> StoredState:
    rng = np.random.default_rng(offset)
    tensors = {s.name: rng.standard_normal((s.layers, s.hidden)).astype(np.float32) for s in specs}
    return StoredState(tensors, partition=partition, offset=offset, updated_ms=1_700_000_000_000)


@st.composite
def specs_and_state(draw: st.DrawFn) -> tuple[tuple[StateSpec, ...], str, StoredState]:
    n = draw(st.integers(1, 3))
    specs = tuple(
        StateSpec(f"s{i}", draw(st.integers(1, 3)), draw(st.integers(1, 40))) for i in range(n)
    )
    version = draw(st.text("abcdef0123456789s", min_size=1, max_size=20))
    tensors = {
        s.name: draw(hnp.arrays(np.float32, (s.layers, s.hidden), elements=st.floats(width=32)))
        for s in specs
    }
    state = StoredState(
        tensors,
        partition=draw(st.integers(0, 2**31 - 1)),
        offset=draw(st.integers(-1, 2**63 - 1)),
        updated_ms=draw(st.integers(0, 2**63 - 1)),
    )
    return specs, version, state


@given(specs_and_state())
@settings(max_examples=60, deadline=None)
def test_round_trip_is_bit_exact(case: tuple[tuple[StateSpec, ...], str, StoredState]) -> None:
    specs, version, state = case
    codec = StateCodec(specs, version)
    blob = codec.encode(state)
    assert len(blob) == codec.size
    result = codec.decode(blob)
    assert result.status is ReadStatus.OK, result.detail
    assert result.state is not None
    got = result.state
    assert (got.partition, got.offset, got.updated_ms) == (
        state.partition,
        state.offset,
        state.updated_ms,
    )
    assert list(got.tensors) == [s.name for s in specs]
    for s in specs:
        assert got.tensors[s.name].dtype == np.float32
        assert got.tensors[s.name].shape == (s.layers, s.hidden)
        assert got.tensors[s.name].tobytes() == state.tensors[s.name].tobytes()


@given(specs_and_state())
@settings(max_examples=30, deadline=None)
def test_fence_fields_sit_at_fixed_positions(
    case: tuple[tuple[StateSpec, ...], str, StoredState],
) -> None:
    # The Lua fence reads these two fields by position; the layout must not drift.
    specs, version, state = case
    blob = StateCodec(specs, version).encode(state)
    assert struct.unpack_from("<i", blob, PARTITION_POS)[0] == state.partition
    assert struct.unpack_from("<q", blob, OFFSET_POS)[0] == state.offset
    assert blob[:4] == b"SCST"


def test_tensor_bytes_are_aligned_for_numpy() -> None:
    codec = StateCodec(SPECS, VERSION)
    result = codec.decode(codec.encode(_state(SPECS)))
    assert result.state is not None
    for t in result.state.tensors.values():
        assert t.flags.aligned


def test_missing() -> None:
    result = StateCodec(SPECS, VERSION).decode(None)
    assert result.status is ReadStatus.MISSING
    assert result.state is None


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_truncated_or_extended_value_is_corrupt(data: st.DataObject) -> None:
    codec = StateCodec(SPECS, VERSION)
    blob = codec.encode(_state(SPECS))
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert codec.decode(blob[:cut]).status is ReadStatus.CORRUPT
    extra = data.draw(st.binary(min_size=1, max_size=16))
    assert codec.decode(blob + extra).status is ReadStatus.CORRUPT


@given(st.binary(max_size=400))
@settings(max_examples=100, deadline=None)
def test_arbitrary_bytes_never_raise(junk: bytes) -> None:
    result = StateCodec(SPECS, VERSION).decode(junk)
    assert result.status in (ReadStatus.CORRUPT, ReadStatus.MISMATCH)
    assert result.state is None
    assert result.detail


def test_bad_magic_and_format_version_are_corrupt() -> None:
    codec = StateCodec(SPECS, VERSION)
    blob = codec.encode(_state(SPECS))
    bad_magic = codec.decode(b"XXXX" + blob[4:])
    assert bad_magic.status is ReadStatus.CORRUPT
    assert "magic" in bad_magic.detail
    bad_format = codec.decode(blob[:4] + bytes([99]) + blob[5:])
    assert bad_format.status is ReadStatus.CORRUPT
    assert "format" in bad_format.detail


def test_non_zero_padding_is_corrupt() -> None:
    codec = StateCodec(SPECS, VERSION)
    blob = bytearray(codec.encode(_state(SPECS)))
    layout_end = HEADER_FIXED_SIZE + len(VERSION) + 8 * len(SPECS)
    data_start = (layout_end + 7) // 8 * 8
    assert data_start > layout_end, "this spec is chosen to need padding"
    blob[layout_end] = 1
    assert codec.decode(bytes(blob)).status is ReadStatus.CORRUPT


def test_other_state_version_is_mismatch() -> None:
    other = StateCodec(SPECS, "s999999999999")
    blob = other.encode(_state(SPECS))
    result = StateCodec(SPECS, VERSION).decode(blob)
    assert result.status is ReadStatus.MISMATCH
    assert "version" in result.detail


def test_other_shapes_are_mismatch() -> None:
    wider = (StateSpec("h", 2, 16), StateSpec("c", 2, 16))
    blob = StateCodec(wider, VERSION).encode(_state(wider))
    result = StateCodec(SPECS, VERSION).decode(blob)
    assert result.status is ReadStatus.MISMATCH
    assert "shapes" in result.detail


def test_other_dtype_code_is_mismatch() -> None:
    codec = StateCodec(SPECS, VERSION)
    blob = codec.encode(_state(SPECS))
    result = codec.decode(blob[:5] + bytes([2]) + blob[6:])
    assert result.status is ReadStatus.MISMATCH
    assert "dtype" in result.detail


def test_encode_rejects_states_that_do_not_fit_the_spec() -> None:
    codec = StateCodec(SPECS, VERSION)
    good = _state(SPECS)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(StoredState({**good.tensors, "h": np.zeros((2, 9), np.float32)}, 0, 1, 1))
    with pytest.raises(ValueError, match="expected states"):
        codec.encode(StoredState({"h": good.tensors["h"]}, 0, 1, 1))
    with pytest.raises(ValueError, match="missing"):
        codec.encode(StoredState({"h": good.tensors["h"], "x": good.tensors["c"]}, 0, 1, 1))
    with pytest.raises(ValueError, match="out of range"):
        codec.encode(StoredState(good.tensors, 2**31, 1, 1))


def test_encode_converts_other_float_dtypes_and_views() -> None:
    codec = StateCodec(SPECS, VERSION)
    batch = np.arange(2 * 5 * 8, dtype=np.float64).reshape(2, 5, 8)  # [layers, B, hidden]
    state = StoredState({"h": batch[:, 1, :], "c": batch[:, 4, :]}, 0, 1, 1)
    result = codec.decode(codec.encode(state))
    assert result.state is not None
    np.testing.assert_array_equal(result.state.tensors["h"], batch[:, 1, :].astype(np.float32))
    np.testing.assert_array_equal(result.state.tensors["c"], batch[:, 4, :].astype(np.float32))


def test_codec_refuses_bad_specs() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        StateCodec(SPECS, "")
