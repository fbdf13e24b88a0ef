import engine
import utils


def test_sharded_eval_sampler_covers_everything_in_equal_shards():
    shards = [list(engine.ShardedEvalSampler(7, rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(set(i for s in shards for i in s)) == list(range(7))


def test_gather_in_order_restores_dataset_order(monkeypatch):
    size, world = 7, 3
    shards = [[f"item{i}" for i in engine.ShardedEvalSampler(size, r, world)] for r in range(world)]
    monkeypatch.setattr(utils, "all_gather_objects", lambda local: shards)
    assert engine.gather_in_order(shards[0], size) == [f"item{i}" for i in range(size)]


def test_scoring_level_is_char_for_chinese_translation_only():
    class A:
        pass
    a = A()
    a.dataset, a.task = "CSL_Daily", "SLT"
    assert engine.scoring_level(a) == "char"
    a.task = "CSLR"
    assert engine.scoring_level(a) == "word"
    a.dataset, a.task = "How2Sign", "SLT"
    assert engine.scoring_level(a) == "word"


def test_best_metric_direction():
    assert engine.BEST_METRIC["CSLR"] == ("wer", False)
    assert engine.BEST_METRIC["SLT"] == ("bleu4", True)
