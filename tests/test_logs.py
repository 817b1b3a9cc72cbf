import json

from tlab_gradio import logs


class CountingReader:
    """A binary file that counts the bytes read from it."""

    def __init__(self, handle):
        self.handle = handle
        self.bytes_read = 0

    def seek(self, *a):
        return self.handle.seek(*a)

    def tell(self):
        return self.handle.tell()

    def read(self, n=-1):
        data = self.handle.read(n)
        self.bytes_read += len(data)
        return data


def test_tail_edge_cases(tmp_path):
    p = tmp_path / "log.txt"
    assert logs.tail(tmp_path / "missing.txt", 5) == []
    p.write_text("")
    assert logs.tail(p, 5) == []
    p.write_text("a\nb\nc")  # no trailing newline: the partial line counts
    assert logs.tail(p, 2) == ["b", "c"]
    assert logs.tail(p, 10) == ["a", "b", "c"]
    p.write_text("a\nb\nc\n")
    assert logs.tail(p, 1) == ["c"]
    assert logs.tail(p, 0) == []
    long_line = "x" * (3 * logs.BLOCK)
    p.write_text(f"first\n{long_line}\nlast\n")
    assert logs.tail(p, 2) == [long_line, "last"]


def test_tail_cost_does_not_grow_with_the_file(tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    line = "step 123 loss 1.2345 some log text\n"
    small.write_text(line * 1_000)
    with open(big, "w") as fh:
        for _ in range(20):
            fh.write(line * 50_000)  # a million lines, ~35 MB
    costs = []
    for path in (small, big):
        with open(path, "rb") as fh:
            reader = CountingReader(fh)
            got = logs.tail_file(reader, 100)
            assert got == [line.strip()] * 100
            costs.append(reader.bytes_read)
    assert costs[1] <= logs.BLOCK  # one block from the end, whatever the size
    assert costs[0] <= logs.BLOCK


def test_follow_returns_whole_lines_and_advances(tmp_path):
    p = tmp_path / "log.txt"
    p.write_text("one\ntw")
    text, off = logs.follow(p, 0)
    assert text == "one\n" and off == 4
    with open(p, "a") as fh:
        fh.write("o\nthree\n")
    text, off = logs.follow(p, off)
    assert text == "two\nthree\n"
    assert logs.follow(p, off) == ("", off)
    p.write_text("new\n")  # replaced by a shorter file: start again
    assert logs.follow(p, off) == ("new\n", 4)


def test_metrics_reading_skips_a_line_being_written(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n{\"step\": 3,")
    assert logs.last_metrics(p, 2) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    records, off = logs.read_metrics(p)
    assert [r["step"] for r in records] == [1, 2]
    with open(p, "a") as fh:
        fh.write(' "loss": 1.0}\n')
    records, _ = logs.read_metrics(p, off)
    assert records == [{"step": 3, "loss": 1.0}]
