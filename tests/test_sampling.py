import pytest
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from scripts.sampling import AnatomyBatchSampler, SetSamplerEpoch


def items(domains: list[int]) -> list[dict]:
    return [{"domain": d, "image": f"{i}.png"} for i, d in enumerate(domains)]


def test_batches_hold_one_anatomy_and_cover_every_item_once():
    domains = [0] * 10 + [1] * 7 + [2] * 3
    sampler = AnatomyBatchSampler(items(domains), batch_size=4, seed=1)
    batches = list(sampler)
    assert all(len({domains[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert len(batches) == len(sampler) == 3 + 2 + 1


def test_fresh_interleaved_order_every_epoch_and_reproducible():
    domains = [0] * 12 + [1] * 12
    s = AnatomyBatchSampler(items(domains), batch_size=2, seed=3)
    e1 = list(s)
    assert list(s) == e1  # the epoch comes from set_epoch (the engine's), not from counting iter() calls
    s.set_epoch(1)
    e2 = list(s)
    assert e1 != e2
    assert [domains[b[0]] for b in e1] != [0] * 6 + [1] * 6  # anatomies interleaved, not in blocks
    again = AnatomyBatchSampler(items(domains), batch_size=2, seed=3)
    assert list(again) == e1


def test_no_shuffle_and_drop_last_and_replicas():
    domains = [0, 0, 0, 1, 1]
    assert list(AnatomyBatchSampler(items(domains), 2, shuffle=False)) == [[0, 1], [2], [3, 4]]
    assert list(AnatomyBatchSampler(items(domains), 2, shuffle=False, drop_last=True)) == [[0, 1], [3, 4]]
    # several replicas, evaluation split: contiguous shares of the one-process batches, nothing repeated
    r0 = list(AnatomyBatchSampler(items(domains), 2, shuffle=False, num_replicas=2, rank=0, even_divisible=False))
    r1 = list(AnatomyBatchSampler(items(domains), 2, shuffle=False, num_replicas=2, rank=1, even_divisible=False))
    assert r0 == [[0, 1]] and r1 == [[2], [3, 4]]


def replicas(domains, batch_size, world, epoch=0, **kwargs):
    out = []
    for rank in range(world):
        s = AnatomyBatchSampler(items(domains), batch_size, seed=5, num_replicas=world, rank=rank, **kwargs)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_replicas_run_the_same_anatomy_at_every_step_on_disjoint_samples():
    domains = [0] * 16 + [1] * 8 + [2] * 12
    for epoch in (0, 1):
        ranks = replicas(domains, 2, 2, epoch)
        assert len(ranks[0]) == len(ranks[1]) == 4 + 2 + 3  # global batches of 2 x 2 per anatomy
        for b0, b1 in zip(*ranks):
            assert len({domains[i] for i in b0 + b1}) == 1 and not set(b0) & set(b1)
        seen = sorted(i for r in ranks for b in r for i in b)
        assert seen == list(range(len(domains)))  # every sample once: no padding needed here
    assert replicas(domains, 2, 2, 0) != replicas(domains, 2, 2, 1)


def test_replicas_pad_like_distributed_sampler_or_drop():
    domains = [0] * 7 + [1] * 2  # world 2, batch 2: anatomy 0 leaves 3 in its last global batch, anatomy 1 has 2
    ranks = replicas(domains, 2, 2)
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]]
    for b0, b1 in zip(*ranks):
        assert len({domains[i] for i in b0 + b1}) == 1
    seen = [i for r in ranks for b in r for i in b]
    assert set(seen) == set(range(9)) and len(seen) == 10  # one repeat: 3 padded to 4
    dropped = replicas(domains, 2, 2, drop_last=True)
    kept = [i for r in dropped for b in r for i in b]
    assert len(kept) == len(set(kept)) == 4 and {domains[i] for i in kept} == {0}  # no global batch of 4 for anatomy 1


def test_evaluation_split_needs_a_batch_per_rank():
    with pytest.raises(ValueError, match="every rank needs at least one"):
        AnatomyBatchSampler(items([0, 0]), 2, shuffle=False, num_replicas=2, rank=0, even_divisible=False)


def test_the_engine_sets_the_epoch_so_a_resumed_run_continues_its_order():
    domains = [0] * 6 + [1] * 6
    data = items(domains)

    def run(resume_at: int = 0) -> list:
        loader = DataLoader(data, batch_sampler=AnatomyBatchSampler(data, 2, seed=4), collate_fn=lambda b: [x["image"] for x in b])
        engine = Engine(lambda e, batch: batch)
        SetSamplerEpoch().attach(engine)
        seen: list = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.output)))
        if resume_at:  # as ResumeFromLatest restores the trainer's counters
            engine.load_state_dict({"epoch": resume_at, "max_epochs": 3, "epoch_length": len(loader)})
        engine.run(loader, max_epochs=3)
        return seen

    full = run()
    assert len({str([b for e, b in full if e == k]) for k in (1, 2, 3)}) == 3  # a fresh order each epoch
    assert run(resume_at=2) == [s for s in full if s[0] == 3]
