"""semi_nnUNet_evaluate: argument parsing only; the work is in semi_nnunet.evaluation.evaluate_api."""
import argparse
import sys

from semi_nnunet.inference.models import PredictionError
from semi_nnunet.utilities.file_ops import save_json_atomic
from semi_nnunet.run.arguments import parse


def _table(summary: dict) -> str:
    unit = summary.get("distance_unit", "mm")
    lines = [f"class      Dice          HD95 ({unit})      ASD ({unit})      cases   false-positive images "
             f"(empty reference)"]
    for k, m in summary["mean"].items():
        s, fp = summary["std"][k], summary["empty_reference"][k]
        fp_text = f"{fp['false_positive_images']} of {fp['cases']}" if fp["cases"] else "no empty reference"
        lines.append(f"{k:<10} {m['Dice']:.4f}±{s['Dice']:.4f} {m['HD95']:7.2f}±{s['HD95']:<6.2f} "
                     f"{m['ASD']:6.2f}±{s['ASD']:<6.2f} {summary['n_cases']:<7} {fp_text}")
    rule = summary.get("empty_rule", "nan")
    lines.append(f"cases with an empty reference and an empty prediction: "
                 f"{'left out of the means (nnU-Net)' if rule == 'nan' else 'scored Dice 1'} (--empty {rule})")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Per case and class Dice, IoU, HD95, ASD, ASSD (mm; pixels for PNG/JPG) of a prediction "
                    "folder against reference masks -> summary.json + metrics.csv; optionally a paired Wilcoxon "
                    "test against a second prediction folder.")
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
    parser.add_argument("--empty", "--empty_rule", dest="empty", default="nan", choices=["nan", "one"],
                        help="a case whose reference and prediction are both empty (a normal image predicted "
                             "normal): nan = left out of the means (nnU-Net's rule, default), one = Dice 1 (as "
                             "several lesion challenges score it)")
    args = parse(parser, argv)

    from semi_nnunet.evaluation.evaluate_api import compare, evaluate
    try:
        summary = evaluate(args.ref, args.pred, args.d, args.dataset_json, args.o, args.np, args.chill,
                           args.ref_classes, args.empty)
        print(f"{args.pred}\n{_table(summary)}")
        if "classification" in summary:
            print(f"classification accuracy {summary['classification']['accuracy']:.4f} "
                  f"({summary['classification']['n']} cases)")
        if args.compare:
            other = evaluate(args.ref, args.compare, args.d, args.dataset_json, None, args.np, args.chill,
                             empty_rule=args.empty)
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
