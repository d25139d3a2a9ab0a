"""Multi-view evaluation against hand computations; distributed padding counted once."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tada.engine.metrics import ViewAccumulator, topk_accuracy, write_per_class_csv

# 3 videos, 3 classes. Video 0 (label 0) shows why softmax scores are summed: one view is extremely
# sure of class 1, two are fairly sure of class 0; summed probabilities pick 0, summed logits pick 1.
LOGITS = {
    (0, 0): [0.0, 20.0, 0.0], (0, 1): [5.0, 0.0, 0.0], (0, 2): [5.0, 0.0, 0.0],
    (1, 0): [0.0, 0.0, 2.0], (1, 1): [0.0, 1.0, 1.5],
    (2, 0): [1.0, 0.0, 0.0], (2, 1): [0.0, 2.0, 0.0],
}
LABELS = {0: 0, 1: 2, 2: 0}


def _hand():
    def sm(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]
    out = {}
    for (i, _), lg in LOGITS.items():
        p = sm(lg)
        out[i] = [a + b for a, b in zip(out.get(i, [0, 0, 0]), p)]
    return out


def _rows(keys):
    logits = torch.tensor([LOGITS[k] for k in keys])
    labels = torch.tensor([LABELS[k[0]] for k in keys])
    return logits, labels, [k[0] for k in keys], [(k[1], 0) for k in keys]


def test_summed_softmax_matches_hand_computation():
    hand = _hand()
    pred = {i: max(range(3), key=lambda c: s[c]) for i, s in hand.items()}
    correct = [pred[i] == LABELS[i] for i in sorted(hand)]
    assert pred[0] == 0 and correct[0]  # (summed logits would say class 1)
    acc = ViewAccumulator(3)
    keys = list(LOGITS)
    acc.add(*_rows(keys[:4]))
    acc.add(*_rows(keys[4:]))
    acc.add(*_rows(keys[:2]))  # repeats (padding): ignored
    res = acc.summarise(with_confusion=True)
    assert res.num_videos == 3 and res.num_views == 7
    assert res.top1 == pytest.approx(100 * sum(correct) / 3)
    # per class: class 0 has videos 0 and 2, class 2 has video 1
    assert res.per_class_acc[0] == pytest.approx(100 * (correct[0] + correct[2]) / 2)
    assert math.isnan(res.per_class_acc[1])
    assert res.mean_class_acc == pytest.approx((res.per_class_acc[0] + res.per_class_acc[2]) / 2)
    assert res.confusion.sum().item() == 3


def test_invalid_views_are_reported_and_excluded(tmp_path):
    acc = ViewAccumulator(3)
    logits, labels, idx, views = _rows(list(LOGITS))
    valid = [i != 1 for i in idx]
    acc.add(logits, labels, idx, views, valid)
    res = acc.summarise()
    assert res.num_videos == 2 and res.invalid == [1]
    assert "1 unreadable and excluded" in res.summary()
    path = write_per_class_csv(tmp_path / "pc.csv", acc.summarise(with_confusion=True), ["a", "b", "c"])
    assert path.read_text().splitlines()[1].startswith("0,a,2,")


def test_topk():
    s = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    acc = topk_accuracy(s, torch.tensor([2, 0]), ks=(1, 2))
    assert acc == {1: 50.0, 2: 100.0}


def test_verb_noun_action():
    acc = ViewAccumulator((3, 4), heads=("verb", "noun"))
    verb = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    noun = torch.tensor([[5.0, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    acc.add((verb, noun), (torch.tensor([0, 1, 0]), torch.tensor([0, 1, 3])), [0, 1, 2], [0, 0, 0])
    res = acc.summarise()
    assert res.extra["verb_top1"] == pytest.approx(200 / 3)  # videos 0, 1
    assert res.extra["noun_top1"] == pytest.approx(200 / 3)  # videos 0, 2
    assert res.extra["action_top1"] == pytest.approx(100 / 3)  # video 0 only


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = ViewAccumulator(3)
        acc.add(*_rows(shards[rank]))
        acc.gather()
        res = acc.summarise()
        torch.save({"top1": res.top1, "videos": res.num_videos, "views": res.num_views}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_across_two_processes_counts_padding_once(tmp_path):
    keys = list(LOGITS)
    # 7 views over 2 ranks, padded to 4 each the way DistributedSampler pads: repeats of the first items
    shards = [keys[0::2], keys[1::2] + [keys[0]]]
    mp.spawn(_worker, args=(2, _free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    single = ViewAccumulator(3)
    single.add(*_rows(keys))
    ref = single.summarise()
    for r in range(2):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=True)
        assert got == {"top1": ref.top1, "videos": 3, "views": 7}
