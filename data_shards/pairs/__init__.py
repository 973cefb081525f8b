"""Comparison pairs for LMOL-style training (SCUT-FBP5500): images split into folds first, pairs made inside each side.

    python -m data_shards pairs --scores labels.txt --image-root Images --folds 5 --out OUT
        [--seed 42] [--train-pairs 45000] [--similar-margin 0.2] [--val-pairs all|N] [--score-bins 10]
    python -m data_shards pairs --fold-csvs 'train_fold{k}_*.csv' 'eval_fold{k}_*.csv' --image-root Images --out OUT
        [--allow-leakage]

From scores (`name score` lines, or a CSV `image,score`): images are dealt into K folds stratified by equal-count
score bins (`folds`). Fold k (counted from 0: fold0 … fold{K-1}, as the k-fold launcher and `--array-folds` expect)
holds out fold k's images: `OUT/fold{k}/val` gets every unordered pair of them (C(n,2)), or a seeded uniform sample
of N; `OUT/fold{k}/train` gets N pairs of the other folds' images, a third of each label, no unordered pair twice
(`sampling`). A label class that the images cannot fill to its third is an error that says how many pairs the
images allow: balance is never silently given up.

Labels, with margin m: Similar when |s1 - s2| < m, First when s1 - s2 >= m (the first image scores
higher), Second when s2 - s1 >= m. Each pair is written in one order only (random for Similar and
validation pairs, set by the label for training pairs): swapping the order, and the label with it,
is the trainer's job, on the fly.

From per-fold CSVs (LMOL's own, `img1,img2,score1,score2,label`): each fold's train and val CSVs are
sharded as given.

Both ways check everything before writing: scores (file:line of every bad line), every image present
under the image root, pair quotas, and leakage (an image, or a byte-identical copy, on both sides of a
fold: refused, naming up to 10, unless `--allow-leakage`). Each fold then goes through the build's own
steps (`shards`): `OUT/fold{k}/pairs_{train,val}.csv` (from scores), `train/` and `val/` shards with
their `index.json`, `report.json`/`report.md` (read = written + rejected), `rejects.jsonl`. Every sample
has label = its class, the `pairs` reader's question, and `extra = {"choices": ["First", "Second",
"Similar"], "score1", "score2", "items": [name1, name2]}`. `OUT/folds.json` (`summary`) records how the
folds were made, the per-fold images and pair counts, and the guarantee as checked: train and val
disjoint, every image in exactly one val fold.

Shards store each sample's images, so an image is stored once per pair it is in (about 2 x the mean
image size + 2 KB per pair): validation sets of all pairs grow with the square of the fold's size.
"""

from data_shards.pairs.plan import PairSettings
from data_shards.pairs.run import PairsJob, pairs_from_fold_csvs, pairs_from_scores

__all__ = ["PairSettings", "PairsJob", "pairs_from_fold_csvs", "pairs_from_scores"]
