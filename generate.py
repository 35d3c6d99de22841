"""Generate videos with Cosmos-Predict1 from a checkout (the same as `cosmos-dist generate`).

    python generate.py model=tiny_text2world prompt="a robot walks through a warehouse"
    torchrun --nproc_per_node=8 generate.py model=7b_text2world prompts_file=prompts.jsonl parallel.cp_size=4 parallel.cfg_parallel=true
    python generate.py --multirun model=tiny_text2world prompt="..." guidance=5,7 seed=1,2

Configuration: conf/ (Hydra); the schema with every key is cosmos_dist/config.py. The command line itself
is cosmos_dist/cli.py; exit codes are listed in cosmos_dist/errors.py and the README.
"""
import sys

from cosmos_dist.cli import EXIT_INTERRUPTED, INTERRUPTED_LINE, generate

if __name__ == "__main__":
    try:
        sys.exit(generate(sys.argv[1:], prog=sys.argv[0]))
    except KeyboardInterrupt:
        print(INTERRUPTED_LINE, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
