# auto with adaptive_best_of_n among its candidates, pooled allocation: never-seen test problems 150-199 per level
set -e
mkdir -p results/auto/adaptive-heldout
# the fixed configurations' problems 0-149: heldout/'s records (a run resumes from records.jsonl)
[ -s results/auto/adaptive-heldout/records.jsonl ] || grep -v '"strategy": "auto"' results/auto/heldout/records.jsonl \
    > results/auto/adaptive-heldout/records.jsonl
H="--dataset arith --level 1,2,3,4,5,6,7,8 --limit 200 --seed 1 --output results/auto/adaptive-heldout"
ponder bench accuracy $H --strategies auto --n 1000,1500,2000
ponder bench accuracy $H --strategies adaptive_best_of_n --n 16 --param adaptive_best_of_n.stop_score=0.4
ponder bench accuracy $H --strategies best_of_n,weighted_best_of_n,beam_search --n 16
ponder bench accuracy $H --strategies best_of_n,beam_search --n 8
ponder bench accuracy $H --strategies beam_search --n 4
