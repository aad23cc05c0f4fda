"""The refinement on a helper process while the bands decode (edge_runtime.overlap): the same pixels, a clean
fall-back when the helper fails, no helper in workers or one-shot decodes, and none left behind."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_runtime import overlap


@pytest.fixture(scope="module")
def shipped():
    """The shipped bundle (it has the learned refinement) and its coder."""
    from edge_runtime.runtime import load_codec

    return load_codec()


@pytest.fixture
def helper(monkeypatch):
    """Overlap enabled, a helper started at the first large decode; stopped afterwards."""
    overlap.shutdown()
    overlap.enable()
    monkeypatch.setattr(overlap, "START_AFTER_S", 0.0)
    yield
    overlap.shutdown()


def _ready(coder, data, rows, cols, quality=12) -> overlap._Helper:
    coder.decode(data, rows, cols, quality)  # starts the helper
    h = overlap._state["helper"]
    assert h is not None
    deadline = time.monotonic() + 60
    while not h.ready():
        assert not h.broken and time.monotonic() < deadline, "the helper did not start"
        time.sleep(0.02)
    return h


def _plane(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    x = 800 + 300 * np.sin(r / 23.0) * np.cos(c / 31.0) + 900 * ((r - rows / 2) ** 2 + (c - cols / 3) ** 2 < 2500)
    return np.clip(x + rng.normal(0, 9, x.shape), 0, 4095) / 4095.0


def _stream(coder, x: np.ndarray, quality: int = 12) -> bytes:
    return coder.encode(x.astype(np.float32), quality)


@pytest.mark.parametrize("shape", [(256, 256), (300, 270), (512, 384)])
def test_the_helper_decodes_the_same_floats(shipped, helper, shape):
    """Each level's prediction computed by the helper while the next bands decode: bit-identical planes."""
    _bundle, coder = shipped
    data = _stream(coder, _plane(*shape))
    overlap._state["enabled"] = False
    alone = coder.decode(data, *shape, 12)
    overlap._state["enabled"] = True
    h = _ready(coder, data, *shape)
    sent = []
    predict = h.predict
    h.predict = lambda refinement, x, level: sent.append(level) or predict(refinement, x, level)
    assert np.array_equal(coder.decode(data, *shape, 12), alone)
    assert sent and min(sent) == 1  # the finest level's prediction went to the helper
    # and the plane as decoded before the decoder went level by level
    name, levels, bands, step = coder._decode_bands(data, *shape, 12)
    assert np.array_equal(coder.transforms[name].synthesis(bands, levels, step=step)[:shape[0], :shape[1]], alone)


def test_one_helper_through_its_shared_buffer_as_it_grows_and_over_the_socket(shipped, helper, monkeypatch):
    """Planes of growing and shrinking sizes through one helper: its shared buffer grows between requests (in both
    processes) and every plane decodes to the floats of a decode without the helper; then the same over the socket,
    as where there is no shared memory."""
    _bundle, coder = shipped
    shapes = [(256, 256), (640, 512), (256, 320), (768, 768)]
    streams = [_stream(coder, _plane(*shape, seed=n)) for n, shape in enumerate(shapes)]
    overlap._state["enabled"] = False
    alone = [coder.decode(data, *shape, 12) for data, shape in zip(streams, shapes)]
    overlap._state["enabled"] = True
    h = _ready(coder, streams[0], *shapes[0])
    assert h._shared is not None  # Linux: a memfd
    sizes = []
    for data, shape, want in zip(streams, shapes, alone):
        assert np.array_equal(coder.decode(data, *shape, 12), want)
        sizes.append(h._shared.size)
    assert sizes[1] > sizes[0] and sizes[3] > sizes[1] and not h.broken and overlap._state["helper"] is h
    overlap.shutdown()
    monkeypatch.setattr(overlap._SharedBuffer, "create", classmethod(lambda cls: None))
    h = _ready(coder, streams[0], *shapes[0])
    assert h._shared is None
    for data, shape, want in zip(streams, shapes, alone):
        assert np.array_equal(coder.decode(data, *shape, 12), want)
    assert not h.broken


def test_a_dead_helper_falls_back_in_line(shipped, helper):
    """The helper killed between decodes: the decode computes the predictions itself, same pixels, and the
    broken helper is replaced at a later decode."""
    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 1))
    expected = coder.decode(data, 256, 256, 12)
    h = _ready(coder, data, 256, 256)
    h._proc.kill()
    h._proc.wait(10)
    assert np.array_equal(coder.decode(data, 256, 256, 12), expected)
    assert h.broken
    coder.decode(data, 256, 256, 12)
    assert overlap._state["helper"] is not h and overlap._state["helper"] is not None


def test_a_corrupt_stream_raises_as_without_a_helper(shipped, helper, monkeypatch):
    """A stream whose low band drives the refinement out of range (its LL mean field set huge): the helper's
    prediction fails, the decode computes it itself and raises the same error as without a helper; the helper
    serves the next decode."""
    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 2))
    h = _ready(coder, data, 256, 256)
    monkeypatch.setattr(overlap, "MIN_PIXELS", 0)  # every level's prediction to the helper
    bad = data[:1] + struct.pack("<i", 1 << 30) + data[5:]
    errors = []
    for enabled in (False, True):
        overlap._state["enabled"] = enabled
        with pytest.raises(ValueError, match="out of range") as info:
            coder.decode(bad, 256, 256, 12)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and not h.broken  # the helper reported its failure and serves on
    monkeypatch.setattr(overlap, "MIN_PIXELS", 1 << 14)
    assert np.array_equal(coder.decode(data, 256, 256, 12), _decoded_in_line(coder, data))
    assert overlap._state["helper"] is h and not h.broken


def test_the_first_error_is_raised_as_without_a_helper(shipped, helper, monkeypatch):
    """A stream corrupt in two ways, its low band out of the refinement's range and its next band undecodable: the
    band's error, as in line (where the prediction is computed only after that band), not the helper's."""
    from edge_runtime import context

    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 5))
    h = _ready(coder, data, 256, 256)
    monkeypatch.setattr(overlap, "MIN_PIXELS", 0)
    bad = data[:1] + struct.pack("<i", 1 << 30) + data[5:]

    def failing(self, phase):
        raise ValueError("a corrupt band")

    monkeypatch.setattr(context.DetailBandContext, "features", failing)
    for enabled in (False, True):
        overlap._state["enabled"] = enabled
        with pytest.raises(ValueError, match="a corrupt band"):
            coder.decode(bad, 256, 256, 12)
    assert not h.broken and not h.busy


def _decoded_in_line(coder, data) -> np.ndarray:
    overlap._state["enabled"] = False
    try:
        return coder.decode(data, 256, 256, 12)
    finally:
        overlap._state["enabled"] = True


def test_small_planes_and_a_few_decodes_start_no_helper(shipped, monkeypatch):
    """Planes under LARGE_PIXELS count for nothing; large ones add their time, and the helper starts at the
    first large decode after START_AFTER_S of them (that decode still runs in line)."""
    overlap.shutdown()
    overlap.enable()
    monkeypatch.setitem(overlap._state, "seconds", 0.0)
    _bundle, coder = shipped
    small = _stream(coder, _plane(120, 200))
    for _ in range(3):
        coder.decode(small, 120, 200, 12)
    assert overlap._state["helper"] is None and overlap._state["seconds"] == 0.0
    large = _stream(coder, _plane(256, 256))
    for _ in range(2):
        coder.decode(large, 256, 256, 12)
    spent = overlap._state["seconds"]
    assert 0.0 < spent < overlap.START_AFTER_S and overlap._state["helper"] is None
    monkeypatch.setitem(overlap._state, "seconds", overlap.START_AFTER_S)
    coder.decode(large, 256, 256, 12)
    assert overlap._state["helper"] is not None
    overlap.shutdown()


def test_workers_start_no_helper(monkeypatch):
    """load_worker_codec (batch and plane pool workers) disables the helper; shutdown stops a running one."""
    from edge_runtime import runtime

    overlap.enable()
    runtime.load_worker_codec()
    assert overlap._state["enabled"] is False
    assert overlap.predictor(object(), 1 << 20)(np.zeros((256, 256)), 1).__class__ is overlap._InLine
    overlap.enable()


def test_the_helper_ends_with_its_process(tmp_path):
    """A process that started a helper and exits (normally, or killed) leaves no helper behind."""
    script = tmp_path / "two_decodes.py"
    script.write_text(
        "import sys, time\n"
        "import numpy as np\n"
        "from edge_runtime import overlap\n"
        "from edge_runtime.runtime import load_codec\n"
        "_b, coder = load_codec()\n"
        "x = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)\n"
        "data = coder.encode(x, 12)\n"
        "overlap.START_AFTER_S = 0.0\n"
        "coder.decode(data, 256, 256, 12); coder.decode(data, 256, 256, 12)\n"
        "h = overlap._state['helper']\n"
        "print(h._proc.pid, flush=True)\n"
        "if sys.argv[1] == 'hang':\n"
        "    time.sleep(600)\n")
    for how in ("exit", "hang"):
        proc = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, text=True)
        pid = int(proc.stdout.readline())
        if how == "hang":
            proc.kill()
        proc.wait(60)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"the helper outlived its process ({how})"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_decode_failing_mid_way_leaves_the_helper_in_step(shipped, helper, monkeypatch):
    """An error in the finest bands' decoding, after the finest prediction went to the helper: its reply is read
    and dropped, and the next decode (through the same helper) gets its own predictions."""
    from edge_runtime import context

    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 3))
    expected = coder.decode(data, 256, 256, 12)
    h = _ready(coder, data, 256, 256)
    features = context.DetailBandContext.features

    def failing(self, phase):
        if self.shape == (128, 128):
            raise ValueError("a corrupt band")
        return features(self, phase)

    monkeypatch.setattr(context.DetailBandContext, "features", failing)
    with pytest.raises(ValueError, match="a corrupt band"):
        coder.decode(data, 256, 256, 12)
    monkeypatch.setattr(context.DetailBandContext, "features", features)
    assert not h.broken and not h.busy
    assert np.array_equal(coder.decode(data, 256, 256, 12), expected)
    assert overlap._state["helper"] is h and not h.broken


def test_ctrl_c_is_the_parents(shipped, helper):
    """SIGINT (Ctrl-C reaches the whole process group) leaves the helper serving: the parent decides."""
    import os
    import signal

    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 4))
    expected = coder.decode(data, 256, 256, 12)
    h = _ready(coder, data, 256, 256)
    os.kill(h._proc.pid, signal.SIGINT)
    time.sleep(0.3)
    assert h._proc.poll() is None
    assert np.array_equal(coder.decode(data, 256, 256, 12), expected) and not h.broken


def test_mutated_streams_decode_or_fail_alike(shipped, helper):
    """Bit flips anywhere in a tile stream: with and without the helper, the same floats or the same error."""
    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 320, 6))
    h = _ready(coder, data, 256, 320)
    rng = np.random.default_rng(11)
    decoded = 0
    for _ in range(40):
        b = bytearray(data)
        b[int(rng.integers(1, len(b)))] ^= 1 << int(rng.integers(0, 8))
        outcomes = []
        for enabled in (False, True):
            overlap._state["enabled"] = enabled
            try:
                outcomes.append(coder.decode(bytes(b), 256, 320, 12))
            except Exception as exc:  # noqa: BLE001 - compared, whatever it is
                outcomes.append(f"{type(exc).__name__}: {exc}")
        if isinstance(outcomes[0], str):
            assert outcomes[0] == outcomes[1]
        else:
            decoded += 1
            assert np.array_equal(outcomes[0], outcomes[1], equal_nan=True)
    assert not h.broken and overlap._state["helper"] is h
    assert decoded  # some flips leave a decodable stream


def _tile(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A 12-bit tile of a CT-like texture: smooth structure and noise."""
    return np.round(_plane(rows, cols, seed) * 4095).astype(np.int64)


@pytest.mark.parametrize("version", [2, 3])
def test_lossless_choices_from_the_helper_give_the_same_stream(shipped, helper, version):
    """A lossless tile without a base whose pass choices the helper makes: the same bytes as choosing in line."""
    from edge_runtime import direct

    _bundle, coder = shipped
    tables = coder._residual_model().tables
    u = _tile(384, 352, version)
    top = int(u.max())
    alone = direct.encode(u, tables, 0, top, version=version)
    _ready(coder, _stream(coder, _plane(256, 256)), 256, 256)
    with overlap.lossless_choices(u, top, version) as choices:
        assert isinstance(choices, overlap._ChoiceStream)
        assert direct.encode(u, tables, 0, top, version=version, choices=choices) == alone
    assert choices.done and choices._inline is None  # every choice came from the helper, then its end
    # and through the codec: a tile stream (its header, then the body) the same bytes with and without it
    with_helper = coder.encode_bounded(u, 0, top, 0, quality=0)
    overlap._state["enabled"] = False
    assert coder.encode_bounded(u, 0, top, 0, quality=0) == with_helper


def _lossless_case(shipped, seed: int) -> tuple:
    """(coder, the residual model's tables, a 384x384 tile, its top, its stream coded in line, the ready helper)."""
    from edge_runtime import direct

    _bundle, coder = shipped
    tables = coder._residual_model().tables
    u = _tile(384, 384, seed)
    top = int(u.max())
    alone = direct.encode(u, tables, 0, top)
    return coder, tables, u, top, alone, _ready(coder, _stream(coder, _plane(256, 256)), 256, 256)


def test_lossless_choices_go_on_in_line_when_the_helper_dies(shipped, helper):
    """The helper killed after the first pass: the encoder takes the rest of the choices in line, the same bytes."""
    from edge_runtime import direct

    _coder, tables, u, top, alone, h = _lossless_case(shipped, 7)
    with overlap.lossless_choices(u, top, direct.HALVES_VERSION) as choices:
        nxt = choices.__next__

        def then_kill():
            out = nxt()
            if choices.taken == 1:
                h._proc.kill()
                h._proc.wait(10)
            return out

        assert direct.encode(u, tables, 0, top, choices=iter(then_kill, None)) == alone
    assert choices._inline is not None and h.broken


def test_an_encode_failing_mid_way_leaves_the_helper_in_step(shipped, helper, monkeypatch):
    """An error in the coding of the fifth pass: the helper's remaining choices are read and dropped, and the next
    encode gets its own."""
    from edge_runtime import direct

    coder, tables, u, top, alone, h = _lossless_case(shipped, 8)
    encode_pass, calls = direct._encode_pass, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise ValueError("a failing pass")
        return encode_pass(*args, **kwargs)

    monkeypatch.setattr(direct, "_encode_pass", failing)
    with pytest.raises(ValueError, match="a failing pass"):
        coder._direct_body(u, top, 0, direct.HALVES_VERSION)
    monkeypatch.setattr(direct, "_encode_pass", encode_pass)
    assert not h.broken and not h.busy
    with overlap.lossless_choices(u, top, direct.HALVES_VERSION) as choices:
        assert direct.encode(u, tables, 0, top, choices=choices) == alone
    assert choices._inline is None and not h.broken


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_leaves_the_parents_helper_alone(shipped, helper):
    """A child forked after the helper started (a user's fork pool) decodes in line and never talks to the
    parent's helper, which serves the parent on."""
    _bundle, coder = shipped
    data = _stream(coder, _plane(256, 256, 9))
    expected = coder.decode(data, 256, 256, 12)
    h = _ready(coder, data, 256, 256)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when it forgot the helper and decodes the same floats in line
        try:
            ok = False
            forgot = overlap._state["helper"] is None and overlap._state["seconds"] == 0.0
            overlap.START_AFTER_S = 1e9  # (no helper of its own either)
            ok = forgot and np.array_equal(coder.decode(data, 256, 256, 12), expected)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert np.array_equal(coder.decode(data, 256, 256, 12), expected)
    assert overlap._state["helper"] is h and not h.broken


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_helper_usage_counts_the_helpers_cpu_and_memory(shipped, helper):
    """What a measurement adds for the helper (keras_codec.evaluation.speed): none without one; with one, its
    peak memory and a CPU time that grows with the predictions it computes."""
    assert overlap.helper_usage() is None
    _bundle, coder = shipped
    data = _stream(coder, _plane(512, 512))
    h = _ready(coder, data, 512, 512)
    before = overlap.helper_usage()
    assert before["pid"] == h._proc.pid and before["peak_rss_mib"] > 10
    deadline = time.monotonic() + 60
    while overlap.helper_usage()["cpu_s"] <= before["cpu_s"]:  # clock ticks: at least one of its CPU time
        assert time.monotonic() < deadline, "the helper's CPU time did not grow"
        coder.decode(data, 512, 512, 12)
    after = overlap.helper_usage()
    assert after["peak_rss_mib"] >= before["peak_rss_mib"]
    overlap.shutdown()
    assert overlap.helper_usage() is None
