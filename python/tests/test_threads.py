"""Python threads sharing one Embedder: results equal serial ones, and the GIL is released
while the model runs."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from conftest import Reference
from deberta_embed import Embedder


def test_concurrent_encode_equals_serial(st2):
    model = Embedder(st2.model_dir, threads=2)
    # 16 different requests: rotations of the sentences, various batch sizes
    jobs = [(st2.sentences[k:] + st2.sentences[:k], 1 + k % 5) for k in range(16)]
    serial = [model.encode(texts, batch_size=bs) for texts, bs in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            futures = [pool.submit(model.encode, texts, batch_size=bs) for texts, bs in jobs]
            for want, f in zip(serial, futures):
                np.testing.assert_array_equal(f.result(), want)


def test_concurrent_encode_on_several_models():
    names = ["st2_v3like", "st6_proj_cls_norm", "hf_seqcls_prefix", "st3_conv_multipool"]
    refs = [Reference(n) for n in names]
    models = [Embedder(r.model_dir, threads=1) for r in refs]
    serial = [m.encode(r.sentences) for m, r in zip(models, refs)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            (i, pool.submit(models[i].encode, refs[i].sentences)) for _ in range(4) for i in range(4)
        ]
        for i, f in futures:
            np.testing.assert_array_equal(f.result(), serial[i])


def test_gil_is_released_during_encode():
    # A pure-Python counter thread advances while encode runs only if encode lets go of the GIL.
    r = Reference("st6_pool_mean_sqrt_len_tokens")  # max_seq_length 512
    model = Embedder(r.model_dir, threads=1)
    texts = [s * 3 for s in r.sentences] * 15
    model.encode(texts[:4])
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        # the counter's pace while this thread sleeps (holding no GIL)
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.2)
        rate = (count[0] - c0) / (time.perf_counter() - t0)
        # one forward batch per call (one native call), repeated until long enough to tell,
        # whatever this machine's speed
        before, t0 = count[0], time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            model.encode(texts, batch_size=len(texts))
        elapsed = time.perf_counter() - t0
        during = count[0] - before
    finally:
        stop.set()
        t.join()
    # Holding the GIL, encode would let the counter run one switch interval (5 ms) at most.
    share = during / (rate * elapsed)
    assert share > 0.25, f"the counter ran at {share:.1%} of its pace during encode"
