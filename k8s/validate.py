"""Validates rendered Kubernetes manifests offline: core kinds against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields are errors), KEDA's kinds against
the models generated from KEDA's CRDs (cloudcoil-models-keda), with any field the
model does not know reported as an error too.

usage: kubectl kustomize k8s/overlays/eu | python k8s/validate.py NAME
"""

import sys

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

KUBERNETES_VERSION = "1.33.0"
KEDA_KINDS = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}


def unknown_fields(given, known, path=""):
    """Paths in `given` that are absent from the model's round trip `known`."""
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, known[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(known, list):
        for index, (value, other) in enumerate(zip(given, known)):
            yield from unknown_fields(value, other, f"{path}[{index}]")


def validate(document):
    kind = document.get("kind")
    if document.get("apiVersion", "").startswith("keda.sh/"):
        model = KEDA_KINDS[kind]
        parsed = model.model_validate(document)
        known = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
        extra = list(unknown_fields(document, known))
        if extra:
            raise ValueError(f"fields KEDA does not know: {extra}")
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def main():
    name = sys.argv[1]
    documents = [d for d in yaml.safe_load_all(sys.stdin) if d]
    failures = 0
    for document in documents:
        label = f"{name}: {document.get('kind')}/{document['metadata']['name']}"
        try:
            validate(document)
            print(f"{label}: valid")
        except Exception as error:  # every failure is reported, then the run fails
            failures += 1
            print(f"{label}: INVALID: {error}", file=sys.stderr)
    if not documents or failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
