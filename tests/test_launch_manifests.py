"""launch/k8s/jobset.yaml, filled as its header says, is valid YAML with the fields
JobSet and Kubernetes require (it is not run here: no cluster)."""
import os
import string

import yaml

from conftest import ROOT

VALUES = {"NAME": "mae-b16", "IMAGE": "registry.example/tandem:1", "NUM_WORKERS": "4",
          "GPUS_PER_WORKER": "8",
          "ARGS": '"--config", "configs/ssl/mae_imagenet.py:model=vit_b", '
                  '"--workdir", "gs://bucket/runs/mae"'}


def test_jobset_template_fills_into_an_indexed_jobset_with_pod_reading_rights():
  text = open(os.path.join(ROOT, "launch", "k8s", "jobset.yaml")).read()
  template = string.Template(text)
  assert {m.group("braced") for m in template.pattern.finditer(text)
          if m.group("braced")} == set(VALUES)
  docs = {d["kind"]: d for d in yaml.safe_load_all(template.substitute(VALUES))}
  assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "JobSet"}
  for doc in docs.values():
    assert doc["apiVersion"] and doc["metadata"]["name"].startswith("mae-b16")

  jobset = docs["JobSet"]
  assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
  assert jobset["spec"]["network"]["enableDNSHostnames"] is True  # Headless svc.
  [replicated] = jobset["spec"]["replicatedJobs"]
  assert replicated["name"] and replicated["replicas"] == 1
  job = replicated["template"]["spec"]
  assert job["completionMode"] == "Indexed"
  assert job["parallelism"] == job["completions"] == 4
  pod = job["template"]["spec"]
  assert pod["restartPolicy"] == "Never"
  assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
  [container] = pod["containers"]
  assert container["name"] and container["image"] == VALUES["IMAGE"]
  assert container["command"] == ["python", "-m", "tandem.ssl.train"]
  assert container["args"][-1] == "--distributed" and container["args"][:2] == [
      "--config", "configs/ssl/mae_imagenet.py:model=vit_b"]
  assert container["resources"]["limits"]["nvidia.com/gpu"] == 8

  # JAX's Kubernetes detection lists pods and services and reads its job.
  rules = {(r["apiGroups"][0], res): set(r["verbs"])
           for r in docs["Role"]["rules"] for res in r["resources"]}
  assert {"list", "get"} <= rules[("", "pods")] and "list" in rules[("", "services")]
  assert "get" in rules[("batch", "jobs")]
  binding = docs["RoleBinding"]
  assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
  assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
