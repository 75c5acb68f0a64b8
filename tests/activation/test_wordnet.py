import pytest

from sparseforge.data.wordnet import Synset, load_wordnet, parse_line, sentences, split_synsets

LICENSE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
NOUN = (
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | "
    "that which is perceived or known or inferred to have its own distinct existence  \n"
    "00045646 04 n 02 rally 0 rallying 0 002 @ 00036762 n 0000 + 01958615 v 0101 | the feat of "
    'mustering strength for a renewed effort; "he singled to start a rally"; "he feared the '
    'rallying of their troops"  \n'
)
VERB = (
    "00022686 29 v 06 stimulate 0 arouse 0 brace 0 energize 0 energise 0 perk_up 1 001 @ "
    "00019448 v 0000 05 + 02 00 + 08 00 + 09 00 + 10 00 + 11 00 | cause to be alert and "
    'energetic; "Coffee and tea stimulate me"  \n'
)
ADJ = (
    "00001740 00 a 01 able(p) 0 001 ! 00002098 a 0101 0 | "
    "(usually followed by `to') having the necessary means  \n"
)
ADV = "00516492 02 r 01 wrongfully 0 000 | in an unjust manner  \n"


@pytest.fixture
def root(tmp_path):
    for name, text in (("noun", NOUN), ("verb", VERB), ("adj", ADJ), ("adv", ADV)):
        (tmp_path / f"data.{name}").write_text(LICENSE + text)
    return tmp_path


def test_parse_words_gloss_and_examples(root):
    synsets = load_wordnet(root)
    assert [s.key for s in synsets] == [
        "n00001740",
        "n00045646",
        "v00022686",
        "a00001740",
        "r00516492",
    ]
    rally = synsets[1]
    assert rally.words == ("rally", "rallying")
    assert rally.definition == "the feat of mustering strength for a renewed effort"
    assert rally.examples == (
        "he singled to start a rally",
        "he feared the rallying of their troops",
    )
    verb = synsets[2]
    assert verb.words[-1] == "perk up" and len(verb.words) == 6  # underscores -> spaces, hex count
    assert verb.examples == ("Coffee and tea stimulate me",)
    assert synsets[3].words == ("able",)  # adjective marker stripped
    assert synsets[0].examples == ()
    assert sentences(synsets[1:2]) == [rally.definition, *rally.examples]


def test_split_is_deterministic_disjoint_and_order_free(root):
    synsets = load_wordnet(root)
    many = [Synset(i, "n", ("w",), f"d{i}", ()) for i in range(2000)]
    train, val, test = split_synsets(many, 0.1, 0.1, seed=3)
    assert len(train) + len(val) + len(test) == 2000
    assert 150 < len(val) < 250 and 150 < len(test) < 250
    keys = {s.key for s in test}
    assert keys.isdisjoint(s.key for s in train) and keys.isdisjoint(s.key for s in val)
    assert {s.key for s in split_synsets(list(reversed(many)), 0.1, 0.1, seed=3)[2]} == keys
    assert {s.key for s in split_synsets(many, 0.1, 0.1, seed=4)[2]} != keys
    assert sum(len(part) for part in split_synsets(synsets)) == len(synsets)
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_synsets(many, 0.6, 0.5)


def test_missing_files_and_bad_lines_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        load_wordnet(tmp_path)
    assert parse_line(LICENSE) is None
    with pytest.raises(ValueError, match="declares 3 words"):
        parse_line("00000001 03 n 03 one 0 two 0 | gloss")
    (tmp_path / "data.noun").write_text("00000001 03 n\n")
    with pytest.raises(ValueError, match=r"data\.noun:1: not a WordNet data line"):
        load_wordnet(tmp_path, ["noun"])
