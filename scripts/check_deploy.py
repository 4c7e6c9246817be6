#!/usr/bin/env python3
"""Checks that the rendered deploy/ objects fit together (run by scripts/check-deploy.sh):

* Deployment: non-root, probes on GET /health at the container's `http` port, a preStop sleep,
  and a terminationGracePeriodSeconds that covers the preStop sleep plus the server's drain (a
  request body may take --body-timeout, 30 s by default, then the queue is answered);
* Service: selects the Deployment's pods and targets its `http` port;
* ServiceMonitor (a CRD: kubernetes-validate has no schema for it): only the fields below, a
  selector that matches the Service, an endpoint on a Service port, path /metrics;
* HorizontalPodAutoscaler: scales the Deployment, and each Pods metric is a name that one
  prometheus-adapter rule exposes; each rule's series is a deberta_embed_ metric;
* the adapter ConfigMap holds a parseable rules config.

Usage: check_deploy.py APP.yaml ADAPTER.yaml
"""

import re
import sys

import yaml

BODY_TIMEOUT_S = 30  # `serve --body-timeout` default


def fail(msg: str) -> None:
    print(f"check_deploy: {msg}", file=sys.stderr)
    sys.exit(1)


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    if len(found) != 1:
        fail(f"expected one {kind}, found {len(found)}")
    return found[0]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def main() -> None:
    app = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
    adapter = [o for o in yaml.safe_load_all(open(sys.argv[2])) if o]
    dep, svc = one(app, "Deployment"), one(app, "Service")
    hpa, sm = one(app, "HorizontalPodAutoscaler"), one(app, "ServiceMonitor")

    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not matches(dep["spec"]["selector"]["matchLabels"], pod_labels):
        fail("the Deployment's selector does not match its pod labels")
    spec = pod["spec"]
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        fail("pods must run as non-root")
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if "http" not in ports:
        fail("the container has no port named http")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c.get(probe, {}).get("httpGet")
        if not get or get["path"] != "/health" or get["port"] not in ("http", ports["http"]):
            fail(f"{probe} must be GET /health on the http port, found {c.get(probe)}")
    env = {e["name"]: e for e in c.get("env", [])}
    if str(env.get("DEBERTA_EMBED_PORT", {}).get("value")) != str(ports["http"]):
        fail("DEBERTA_EMBED_PORT must be the http container port")
    if env.get("DEBERTA_EMBED_HOST", {}).get("value") != "0.0.0.0":
        fail("the server must listen on 0.0.0.0 in a pod")
    if "DEBERTA_EMBED_MODEL" not in env:
        fail("no DEBERTA_EMBED_MODEL")
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < pre_stop + BODY_TIMEOUT_S + 1:
        fail(f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + body timeout {BODY_TIMEOUT_S} s")
    if "replicas" in dep["spec"]:
        fail("the HPA owns replicas: leave them out of the Deployment")

    if not matches(svc["spec"]["selector"], pod_labels):
        fail("the Service does not select the Deployment's pods")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if svc_ports.get("http", {}).get("targetPort") not in ("http", ports["http"]):
        fail("the Service's http port must target the container's http port")

    allowed_sm = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    extra = set(sm["spec"]) - allowed_sm
    if extra:
        fail(f"ServiceMonitor spec has unexpected fields {extra}")
    if not matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
        fail("the ServiceMonitor does not select the Service")
    for ep in sm["spec"]["endpoints"]:
        extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme"}
        if extra:
            fail(f"ServiceMonitor endpoint has unexpected fields {extra}")
        if ep["port"] not in svc_ports or ep.get("path") != "/metrics":
            fail(f"ServiceMonitor endpoint {ep} must scrape /metrics on a Service port")
        for k in ("interval", "scrapeTimeout"):
            if k in ep and not re.fullmatch(r"\d+(ms|s|m)", ep[k]):
                fail(f"ServiceMonitor {k} {ep[k]!r} is not a Prometheus duration")

    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", dep["metadata"]["name"]):
        fail("the HPA does not scale the Deployment")
    if hpa["apiVersion"] != "autoscaling/v2":
        fail("the HPA must be autoscaling/v2")

    (cm,) = [o for o in adapter if o["kind"] == "ConfigMap"]
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    exposed = {}
    for r in rules:
        m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r["seriesQuery"])
        series = m.group(1)
        if not series.startswith("deberta_embed_"):
            fail(f"adapter rule on {series}, not a deberta_embed_ metric")
        if set(r["resources"]["overrides"]) != {"namespace", "pod"}:
            fail(f"adapter rule {series} must map namespace and pod")
        name = re.sub(r["name"]["matches"], r["name"]["as"].replace("${1}", r"\1"), series)
        exposed[name] = series
    metrics = [m for m in hpa["spec"]["metrics"]]
    if not metrics:
        fail("the HPA has no metrics")
    for m in metrics:
        if m["type"] != "Pods":
            fail(f"unexpected HPA metric type {m['type']}")
        name = m["pods"]["metric"]["name"]
        if name not in exposed:
            fail(f"HPA metric {name} is not one the adapter exposes ({sorted(exposed)})")
    print(f"check_deploy: ok (HPA on {', '.join(m['pods']['metric']['name'] for m in metrics)};"
          f" grace {grace} s)")


if __name__ == "__main__":
    main()
