"""semi_nnUNet_evaluate: argument parsing only; the work is in semi_nnunet.evaluation.evaluate_api."""
import argparse
import sys

from semi_nnunet.inference.models import PredictionError
from semi_nnunet.utilities.file_ops import save_json_atomic
from semi_nnunet.run.arguments import parse


def _table(summary: dict) -> str:
    lines = ["class      Dice          HD95 (mm)      ASD (mm)      cases"]
    for k, m in summary["mean"].items():
        s = summary["std"][k]
        lines.append(f"{k:<10} {m['Dice']:.4f}±{s['Dice']:.4f} {m['HD95']:7.2f}±{s['HD95']:<6.2f} "
                     f"{m['ASD']:6.2f}±{s['ASD']:<6.2f} {summary['n_cases']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Per case and class Dice, IoU, HD95, ASD, ASSD (mm) of a prediction folder against reference "
                    "masks -> summary.json + metrics.csv; optionally a paired Wilcoxon test against a second "
                    "prediction folder.")
    parser.add_argument("-ref", required=True, help="folder of reference masks (e.g. labelsTs)")
    parser.add_argument("-pred", required=True, help="folder of predictions (e.g. from semi_nnUNet_predict)")
    parser.add_argument("-d", default=None, help="dataset id or name (labels from its dataset.json)")
    parser.add_argument("--dataset_json", default=None, help="dataset.json to take the labels from instead of -d")
    parser.add_argument("-o", default=None, help="output folder for summary.json / metrics.csv (default: -pred)")
    parser.add_argument("--compare", default=None,
                        help="second prediction folder: evaluate it too and test B (--compare) vs A (-pred), paired "
                             "Wilcoxon per class on Dice, HD95, ASD -> comparison.json")
    parser.add_argument("--ref_classes", default=None,
                        help="CSV 'case,class': accuracy of the prediction's classes.csv (classification heads)")
    parser.add_argument("-np", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--chill", action="store_true", help="evaluate only the predicted cases")
    args = parse(parser, argv)

    from semi_nnunet.evaluation.evaluate_api import compare, evaluate
    try:
        summary = evaluate(args.ref, args.pred, args.d, args.dataset_json, args.o, args.np, args.chill,
                           args.ref_classes)
        print(f"{args.pred}\n{_table(summary)}")
        if "classification" in summary:
            print(f"classification accuracy {summary['classification']['accuracy']:.4f} "
                  f"({summary['classification']['n']} cases)")
        if args.compare:
            other = evaluate(args.ref, args.compare, args.d, args.dataset_json, None, args.np, args.chill)
            print(f"{args.compare}\n{_table(other)}")
            result = compare(summary, other)
            save_json_atomic(result, f"{args.o or args.pred}/comparison.json")
            for label, metrics in result.items():
                for metric, r in metrics.items():
                    print(f"class {label} {metric}: B - A = {r['mean_difference']:+.4f} over {r['n']} cases, "
                          f"Wilcoxon p = {r['p_value']:.4g}")
    except PredictionError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
