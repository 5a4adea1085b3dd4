"""A Verda customer's day, with the official Verda Python SDK, unmodified,
against Tessera's Verda face.

Run by crates/tessera/tests/api/verda_sdk.rs. Environment:

  VERDA_BASE_URL        http://HOST:PORT/verda/v1
  VERDA_CLIENT_ID, VERDA_CLIENT_SECRET
  VERDA_LOCATION        default FIN-01
  VERDA_INSTANCE_TYPE   default CPU.4V.16G
  VERDA_IMAGE           default ubuntu-24.04
  VERDA_SSH_PUBLIC_KEY  a public key line for the instance
  VERDA_PAUSE_FILE      optional: once the instance runs, its address is
                        written there and the scenario waits (up to 120 s)
                        until the file is removed (the caller SSHes in)
  VERDA_OS_VOLUME_SIZE  default 20: the OS volume's size in GB
  VERDA_SKIP_DEPLOYMENTS  optional, why: the deployments and jobs steps are
                        skipped (their images would come from the Internet)

Each step prints `ok <step> <detail>`; the last line is `scenario passed`.

The SDK's services and where they are called (in scope: everything but
clusters):

  authentication  authenticate (VerdaClient()), refresh        step "auth"
  locations       get                                           "catalog"
  instance_types  get                                           "catalog"
  images          get                                           "catalog"
  volume_types    get                                           "catalog"
  long_term       get_instance_periods, get_cluster_periods     "catalog"
  container_types get                                           "catalog"
  cluster_types   get                                           "catalog"
  instances       is_available, get_availabilities              "availability"
                  create, get, get_by_id, action                "deploy", "shutdown", ...
  balance         get                                           "balance", "billed"
  ssh_keys        create, get, get_by_id, delete_by_id, delete  "key", "cleanup"
  startup_scripts create, get, get_by_id, delete_by_id, delete  "script", "cleanup"
  volumes         create, get, get_by_id, attach, detach,       "volumes"
                  increase_size, rename, clone, delete,
                  delete_by_id, get_in_trash
  containers      create_secret, get_secrets, delete_secret,    "secrets"
                  create_fileset_secret_from_file_paths,
                  get_fileset_secrets, delete_fileset_secret,
                  add_registry_credentials, get_registry_credentials,
                  delete_registry_credentials
  containers      get_compute_resources, create_deployment,     "deployments"
                  get_deployment_status, get_deployment_replicas,
                  (update|get)_deployment_scaling_options, the
                  environment variable calls, get_deployment_by_name,
                  update_deployment, pause, resume, restart, purge,
                  delete_deployment, get_deployments
  job_deployments create, get, get_by_name, get_status,         "jobs"
                  get_scaling_options, update, pause, resume,
                  purge_queue, delete
  out of scope:   clusters, inference_client (the real driver's
                  tests call deployments and jobs)
"""

import os
import sys
import time

import requests
from verda import VerdaClient
from verda.exceptions import APIException

BASE = os.environ["VERDA_BASE_URL"]
LOCATION = os.environ.get("VERDA_LOCATION", "FIN-01")
TYPE = os.environ.get("VERDA_INSTANCE_TYPE", "CPU.4V.16G")
IMAGE = os.environ.get("VERDA_IMAGE", "ubuntu-24.04")
PUBLIC_KEY = os.environ["VERDA_SSH_PUBLIC_KEY"]
PAUSE = os.environ.get("VERDA_PAUSE_FILE")
OS_VOLUME_GB = int(os.environ.get("VERDA_OS_VOLUME_SIZE", "20"))


def ok(step, detail=""):
    print(f"ok {step} {detail}".rstrip(), flush=True)


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", flush=True)
        sys.exit(1)


def wait_status(client, instance_id, status, within=120):
    deadline = time.monotonic() + within
    while True:
        instance = client.instances.get_by_id(instance_id)
        if instance.status == status:
            return instance
        check(time.monotonic() < deadline, f"instance {instance_id} is {instance.status}, not {status}")
        time.sleep(0.3)


def wait_volume(client, volume_id, predicate, what, within=60):
    deadline = time.monotonic() + within
    while True:
        volume = client.volumes.get_by_id(volume_id)
        if predicate(volume):
            return volume
        check(time.monotonic() < deadline, f"volume {volume_id}: {what} (it is {volume.status})")
        time.sleep(0.3)


def main():
    # Authentication: the constructor logs in; a refresh trades the refresh
    # token for new tokens, and the old refresh token is then refused.
    client = VerdaClient(os.environ["VERDA_CLIENT_ID"], os.environ["VERDA_CLIENT_SECRET"], base_url=BASE)
    auth = client._authentication
    old_refresh = auth._refresh_token
    refreshed = auth.refresh()
    check(refreshed["refresh_token"] != old_refresh, "refresh gave the same refresh token")
    check(refreshed["scope"] == "cloud-api-v1", f"scope {refreshed['scope']}")
    reused = requests.post(
        BASE + "/oauth2/token", json={"grant_type": "refresh_token", "refresh_token": old_refresh}
    )
    check(reused.status_code == 401, f"a used refresh token answered {reused.status_code}")
    check(reused.json()["code"] == "unauthorized_request", reused.text)
    ok("auth", "login, refresh, used refresh token refused")

    # The catalog.
    locations = client.locations.get()
    codes = [l["code"] for l in locations]
    check(LOCATION in codes and "ICE-01" in codes, f"locations {codes}")
    types = client.instance_types.get()
    names = [t.instance_type for t in types]
    check(TYPE in names and "CPU.4V.16G" in names, f"instance types {names}")
    cpu = next(t for t in types if t.instance_type == "CPU.4V.16G")
    check(cpu.cpu["number_of_cores"] == 4 and cpu.memory["size_in_gigabytes"] == 16, f"{cpu}")
    images = [i.image_type for i in client.images.get()]
    check(IMAGE in images and "ubuntu-24.04" in images, f"images {images}")
    volume_types = {t.type: t.price_per_month_per_gb for t in client.volume_types.get()}
    check("NVMe" in volume_types, f"volume types {volume_types}")
    periods = client.long_term.get_instance_periods()
    check(any(p.code == "3_MONTHS" for p in periods), f"periods {periods}")
    check(len(client.long_term.get_cluster_periods()) > 0, "cluster periods")
    check(len(client.container_types.get()) > 0, "container types")
    check(len(client.cluster_types.get()) > 0, "cluster types")
    ok("catalog", f"{len(codes)} locations, {len(names)} instance types, {len(images)} images")

    check(client.instances.is_available(TYPE, location_code=LOCATION), f"{TYPE} unavailable in {LOCATION}")
    check(not client.instances.is_available(TYPE, location_code="ICE-01"), f"{TYPE} available in ICE-01")
    availability = client.instances.get_availabilities(location_code=LOCATION)
    check(TYPE in availability[0]["availabilities"], f"availability {availability}")
    ok("availability", f"{TYPE} in {LOCATION}")

    start_balance = client.balance.get().amount
    ok("balance", f"{start_balance}")

    key = client.ssh_keys.create("scenario-key", PUBLIC_KEY)
    check(client.ssh_keys.get_by_id(key.id).public_key == PUBLIC_KEY, "key read back")
    check(key.id in [k.id for k in client.ssh_keys.get()], "key listed")
    ok("key", key.id)
    script = client.startup_scripts.create("scenario-script", "#!/bin/sh\necho scenario > /root/scenario-ran\n")
    check(client.startup_scripts.get_by_id(script.id).name == "scenario-script", "script read back")
    check(script.id in [s.id for s in client.startup_scripts.get()], "script listed")
    ok("script", script.id)

    # Deploy, with the key, the script, an OS volume and a new data volume.
    instance = client.instances.create(
        instance_type=TYPE,
        image=IMAGE,
        hostname="scenario-1",
        description="the SDK scenario",
        ssh_key_ids=[key.id],
        location=LOCATION,
        startup_script_id=script.id,
        os_volume={"name": "scenario-os", "size": OS_VOLUME_GB},
        volumes=[{"name": "scenario-data", "size": 1, "type": "NVMe"}],
    )
    instance = wait_status(client, instance.id, "running")
    check(instance.location == LOCATION and instance.instance_type == TYPE, f"{instance}")
    check(instance.ssh_key_ids == [key.id], f"keys {instance.ssh_key_ids}")
    mine = [v for v in client.volumes.get() if v.instance_id == instance.id]
    check(
        sorted(v.name for v in mine) == ["scenario-data", "scenario-os"]
        and instance.os_volume_id in [v.id for v in mine],
        f"its volumes {mine}",
    )
    os_volume = next(v for v in mine if v.id == instance.os_volume_id)
    check(os_volume.is_os_volume and os_volume.size == OS_VOLUME_GB and os_volume.target == "vda", f"{os_volume}")
    check(instance.id in [i.id for i in client.instances.get(status="running")], "listed as running")
    ok("deploy", f"instance {instance.id} ip={instance.ip}")
    print(f"ok instance {instance.id} ip={instance.ip}", flush=True)

    if PAUSE:
        with open(PAUSE, "w") as f:
            f.write(instance.ip)
        deadline = time.monotonic() + 120
        while os.path.exists(PAUSE):
            check(time.monotonic() < deadline, "the caller never removed the pause file")
            time.sleep(0.2)
        ok("paused", "the caller checked the instance")

    # Errors come back as APIException with Verda's codes.
    try:
        client.instances.get_by_id("no-such-instance")
        check(False, "an unknown instance was found")
    except APIException as e:
        check(e.code == "not_found", f"code {e.code}")
    ok("errors", "not_found")

    client.instances.action(instance.id, "shutdown")
    wait_status(client, instance.id, "offline")
    ok("shutdown", instance.id)

    # Volumes: create, list, get, attach to the shut-down instance, detach,
    # resize, rename, clone, delete to the trash and for good.
    volume = client.volumes.create(type="NVMe", name="scenario-extra", size=1, location=LOCATION)
    check(volume.id in [v.id for v in client.volumes.get()], "volume listed")
    check(client.volumes.get_by_id(volume.id).status == "detached", "new volume detached")
    client.volumes.attach(volume.id, instance.id)
    attached = client.volumes.get_by_id(volume.id)
    check(attached.status == "attached" and attached.instance_id == instance.id, f"{attached}")
    client.volumes.detach(volume.id)
    check(client.volumes.get_by_id(volume.id).status == "detached", "detached")
    client.volumes.increase_size(volume.id, 2)
    check(client.volumes.get_by_id(volume.id).size == 2, "resized")
    client.volumes.rename(volume.id, "scenario-renamed")
    check(client.volumes.get_by_id(volume.id).name == "scenario-renamed", "renamed")
    clone = client.volumes.clone(volume.id, name="scenario-clone")
    check(clone.size == 2 and clone.name == "scenario-clone", f"clone {clone}")
    client.volumes.delete(volume.id)
    trashed = client.volumes.get_by_id(volume.id)
    check(trashed.status == "deleted" and trashed.deleted_at, f"trashed {trashed}")
    check(volume.id in [v.id for v in client.volumes.get_in_trash()], "in the trash")
    client.volumes.delete_by_id(clone.id, is_permanent=True)
    check(client.volumes.get_by_id(clone.id).status == "deleted", "clone deleted")
    ok("volumes", "create attach detach resize rename clone delete trash")

    # Start it again, then delete it with its volumes.
    client.instances.action(instance.id, "boot")
    wait_status(client, instance.id, "running")
    ok("boot", instance.id)

    # Running it and keeping its volumes cost money: the balance goes down
    # as it runs (by the micro-dollar: on simulated hosts the whole
    # scenario may take a second, less than a micro-dollar's worth).
    deadline = time.monotonic() + 30
    while (running_balance := client.balance.get().amount) >= start_balance:
        check(time.monotonic() < deadline, f"balance {start_balance} -> {running_balance}")
        time.sleep(0.2)
    ok("billed", f"{start_balance} -> {running_balance}")

    client.instances.action(instance.id, "delete", volume_ids=[v.id for v in mine], delete_permanently=True)
    wait_status(client, instance.id, "discontinued")
    check(instance.id not in [i.id for i in client.instances.get()], "deleted instance listed")
    ok("delete", instance.id)
    # Its meter stopped when the delete was asked for.
    end_balance = client.balance.get().amount
    check(end_balance <= running_balance, f"balance {running_balance} -> {end_balance}")

    client.ssh_keys.delete_by_id(key.id)
    client.startup_scripts.delete_by_id(script.id)
    spare_key = client.ssh_keys.create("scenario-spare", PUBLIC_KEY)
    spare_script = client.startup_scripts.create("scenario-spare", "echo")
    client.ssh_keys.delete([spare_key.id])
    client.startup_scripts.delete([spare_script.id])
    check(key.id not in [k.id for k in client.ssh_keys.get()], "key still listed")
    check(script.id not in [s.id for s in client.startup_scripts.get()], "script still listed")
    ok("cleanup", "keys and scripts deleted")

    # Secrets, file secrets and registry credentials: made, listed (never
    # their values), refused as duplicates, deleted.
    containers = client.containers
    containers.create_secret("scenario-token", "tk_scenario-secret")
    import tempfile
    with tempfile.TemporaryDirectory() as files:
        paths = []
        for name, text in [("tokens.txt", "a=1\n"), ("config.json", "{}")]:
            path = os.path.join(files, name)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        containers.create_fileset_secret_from_file_paths("scenario-files", paths)
    listed = {s.name: s.secret_type for s in containers.get_secrets()}
    check(listed == {"scenario-token": "generic", "scenario-files": "file-secret"}, f"secrets {listed}")
    filesets = containers.get_fileset_secrets()
    check([f.name for f in filesets] == ["scenario-files"], f"file secrets {filesets}")
    try:
        containers.create_secret("scenario-token", "again")
        check(False, "a duplicate secret was accepted")
    except APIException as err:
        check(err.code == "conflict", f"duplicate secret: {err}")
    from verda.containers import CustomRegistryCredentials, DockerHubCredentials, GithubCredentials
    containers.add_registry_credentials(DockerHubCredentials("scenario-hub", "me", "dckr_pat_x"))
    containers.add_registry_credentials(GithubCredentials("scenario-gh", "me", "ghp_x"))
    containers.add_registry_credentials(
        CustomRegistryCredentials("scenario-own", '{"auths": {"127.0.0.1:5000": {"auth": "bWU6cHc="}}}')
    )
    creds = sorted(c.name for c in containers.get_registry_credentials())
    check(creds == ["scenario-gh", "scenario-hub", "scenario-own"], f"credentials {creds}")
    containers.delete_secret("scenario-token")
    containers.delete_fileset_secret("scenario-files")
    for name in creds:
        containers.delete_registry_credentials(name)
    check(containers.get_secrets() == [] and containers.get_registry_credentials() == [], "left over")
    ok("secrets", "2 secrets, 3 registry credentials")

    # A container deployment, driven as the SDK's examples do (its
    # replicas run on the scenario's hosts; calling it needs the real
    # driver, which serverless_dataplane.rs covers).
    from verda.containers import (
        ComputeResource, Container, ContainerDeploymentStatus, Deployment, EnvVar, EnvVarType,
        GeneralStorageMount, HealthcheckSettings, QueueLoadScalingTrigger,
        ScalingOptions, ScalingPolicy, ScalingTriggers,
    )
    from verda.containers._containers import MemoryMount  # not re-exported by the package
    resources = containers.get_compute_resources()
    general = [r for r in resources if r.name == "General Compute" and r.size == 1]
    check(len(general) == 1, f"resources {resources}")
    if os.environ.get("VERDA_SKIP_DEPLOYMENTS"):
        # On a real host the replicas would pull from the Internet;
        # serverless_dataplane.rs runs deployments there from a local registry.
        ok("deployments", "skipped: " + os.environ["VERDA_SKIP_DEPLOYMENTS"])
        print("scenario passed", flush=True)
        return
    if not general[0].is_available:
        # A fleet of Kloigos units only: no pooled CPU to share.
        ok("deployments", "General Compute is not available on this fleet, and said so")
        print("scenario passed", flush=True)
        return
    containers.create_secret("scenario-app-token", "tk_app")
    scaling = ScalingOptions(
        min_replica_count=1, max_replica_count=2,
        scale_down_policy=ScalingPolicy(delay_seconds=300), scale_up_policy=ScalingPolicy(delay_seconds=0),
        queue_message_ttl_seconds=300, concurrent_requests_per_replica=1,
        scaling_triggers=ScalingTriggers(queue_load=QueueLoadScalingTrigger(threshold=1)),
    )
    deployment = Deployment(
        name="scenario-app",
        containers=[Container(
            image="registry-1.docker.io/library/nginx:1.27", exposed_port=80,
            healthcheck=HealthcheckSettings(enabled=True, port=80, path="/"),
            env=[EnvVar(name="TOKEN", value_or_reference_to_secret="scenario-app-token", type=EnvVarType.SECRET)],
            volume_mounts=[GeneralStorageMount("/data"), MemoryMount(64)],
        )],
        compute=ComputeResource(name="General Compute", size=1),
        scaling=scaling,
    )
    created = containers.create_deployment(deployment)
    check(created.endpoint_base_url.endswith("/inference/scenario-app"), created.endpoint_base_url)
    check(created.containers[0].name == "nginx-0", f"{created.containers[0]}")
    deadline = time.monotonic() + 60
    while True:
        status = containers.get_deployment_status("scenario-app")
        replicas = containers.get_deployment_replicas("scenario-app")
        if status == ContainerDeploymentStatus.HEALTHY and len(replicas) == 1:
            break
        check(time.monotonic() < deadline, f"deployment {status}, replicas {replicas}")
        time.sleep(0.3)
    scaling.max_replica_count = 3
    check(containers.update_deployment_scaling_options("scenario-app", scaling).max_replica_count == 3, "scaling")
    check(containers.get_deployment_scaling_options("scenario-app").max_replica_count == 3, "scaling read")
    envs = containers.get_deployment_environment_variables("scenario-app")
    check([e.name for e in envs["nginx-0"]] == ["TOKEN"], f"env {envs}")
    envs = containers.add_deployment_environment_variables(
        "scenario-app", "nginx-0", [EnvVar(name="MODE", value_or_reference_to_secret="a", type=EnvVarType.PLAIN)])
    check([e.name for e in envs["nginx-0"]] == ["TOKEN", "MODE"], f"env {envs}")
    envs = containers.update_deployment_environment_variables(
        "scenario-app", "nginx-0", [EnvVar(name="MODE", value_or_reference_to_secret="b", type=EnvVarType.PLAIN)])
    check(envs["nginx-0"][1].value_or_reference_to_secret == "b", f"env {envs}")
    envs = containers.delete_deployment_environment_variables("scenario-app", "nginx-0", ["MODE"])
    check([e.name for e in envs["nginx-0"]] == ["TOKEN"], f"env {envs}")
    read = containers.get_deployment_by_name("scenario-app")
    read.is_spot = True
    check(containers.update_deployment("scenario-app", read).is_spot, "update")
    containers.pause_deployment("scenario-app")
    check(containers.get_deployment_status("scenario-app") == ContainerDeploymentStatus.PAUSED, "paused")
    containers.resume_deployment("scenario-app")
    containers.restart_deployment("scenario-app")
    containers.purge_deployment_queue("scenario-app")
    try:
        containers.delete_secret("scenario-app-token")
        check(False, "a secret in use was deleted")
    except APIException as err:
        check(err.code == "conflict", f"secret in use: {err}")
    containers.delete_deployment("scenario-app")
    check("scenario-app" not in [d.name for d in containers.get_deployments()], "deployment still listed")
    containers.delete_secret("scenario-app-token")
    ok("deployments", "create, scale, env, pause, resume, restart, purge, delete")

    # A job deployment, through the SDK's job_deployments service.
    from verda.job_deployments import JobDeployment, JobDeploymentStatus, JobScalingOptions
    jobs = client.job_deployments
    job = jobs.create(JobDeployment(
        name="scenario-job",
        containers=[Container(image="registry-1.docker.io/library/busybox:1.36", exposed_port=8080)],
        compute=ComputeResource(name="General Compute", size=1),
        scaling=JobScalingOptions(max_replica_count=2, queue_message_ttl_seconds=300, deadline_seconds=3600),
    ))
    check(job.endpoint_base_url.endswith("/inference/scenario-job"), job.endpoint_base_url)
    check([j.name for j in jobs.get()] == ["scenario-job"], "jobs listed")
    check(jobs.get_by_name("scenario-job").scaling.deadline_seconds == 3600, "job read")
    check(jobs.get_status("scenario-job") == JobDeploymentStatus.RUNNING, "job running")
    read = jobs.get_by_name("scenario-job")
    read.scaling.max_replica_count = 3
    check(jobs.update("scenario-job", read).scaling.max_replica_count == 3, "job updated")
    check(jobs.get_scaling_options("scenario-job").max_replica_count == 3, "job scaling")
    jobs.pause("scenario-job")
    check(jobs.get_status("scenario-job") == JobDeploymentStatus.PAUSED, "job paused")
    jobs.resume("scenario-job")
    jobs.purge_queue("scenario-job")
    jobs.delete("scenario-job", timeout=60000)
    check(jobs.get() == [], "job still listed")
    ok("jobs", "create, read, update, pause, resume, purge, delete")
    print("scenario passed", flush=True)


if __name__ == "__main__":
    main()
