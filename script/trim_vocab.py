"""Writes a language-model folder trimmed to the tokens of the training corpora (vocab_trim.py).

    python script/trim_vocab.py --mt5_path pretrained_weight/mt5-base --dataset PHOENIX2014T \
        --splits train --out pretrained_weight/mt5-base-phoenix

The new folder is given to the trainer with --mt5_path; every special token is kept, and the
prompt of each dataset's language. Trim on the training split only (as MMTLB and GFSLT-VLP do)
or on all splits: a dev or test word outside the kept tokens becomes <unk>.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import config  # noqa: E402
import language_models  # noqa: E402
import vocab_trim  # noqa: E402
from keypoints import DataError  # noqa: E402


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_argument_group('trimming')
    cli.add_flag(g, '--mt5_path', required=True, metavar='DIR',
                 help='the full language-model folder (mT5, mBART or T5)')
    cli.add_flag(g, '--out', required=True, metavar='DIR', help='the trimmed folder to write')
    cli.add_flag(g, '--dataset', required=True, type=lambda s: s.split(','),
                 help='datasets whose label files make the corpus (comma-separated)')
    cli.add_flag(g, '--splits', default='train', type=lambda s: s.split(','),
                 help='splits read (comma-separated: train, dev, test)')
    cli.add_flag(g, '--data_root', metavar='DIR', help='data root of the label files')
    cli.add_flag(g, '--glosses', action='store_true',
                 help='also keep the tokens of the gloss strings (CSLR with --head generate)')
    cli.add_flag(g, '--lm', choices=('auto',) + language_models.LMS, default='auto',
                 help="the folder's model (auto: from its config.json)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if os.path.exists(args.out) and os.listdir(args.out):
            raise config.ConfigError(f"--out {args.out} exists and is not empty")
        texts = vocab_trim.corpus_texts(args.dataset, args.splits, args.data_root, args.glosses)
        kept, full = vocab_trim.trim_folder(args.mt5_path, args.out, texts, args.lm)
    except (config.ConfigError, DataError, OSError) as error:
        print(f"trim_vocab.py: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: kept {kept} of {full} tokens ({kept / full:.1%}) for "
          f"{len(texts)} texts of {', '.join(args.dataset)} ({', '.join(args.splits)})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
