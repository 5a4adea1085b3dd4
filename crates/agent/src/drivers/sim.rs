//! A simulated host: the fleet of `tessera server --sim-hosts`.
//!
//! Each simulated host reports the CPUs it was registered with and the
//! memory of its plan, or 8 GiB per CPU (unless configured otherwise), and keeps in memory what a
//! real host would keep on disk: which unit users exist and which keys they
//! hold. It refuses calls a real host would refuse, so control-plane bugs
//! show up in tests. Failures and latency can be injected per host and per
//! kind of call, to exercise the control plane's failure paths.
//!
//! A simulated host is also an [`InstanceRuntime`], so `tessera agent
//! --driver sim` runs its (pretend) instances through the same trait as the
//! container driver. The design decision: it pretends, and says so.
//! Nothing runs; a session into an instance is a small in-memory shell
//! that echoes, exits, and answers every other command with "not run"
//! (with a terminal it also echoes what is typed, ends lines with `\r\n`,
//! and answers `tty` and `stty size`). Its observations are its own state:
//! whether each instance runs, and no usage.

use super::instances::check_spec;
use super::{InstanceRuntime, InstanceStatus, Session, SessionControl, SessionRequest, TtySize};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::{
    AgentDirectory, AgentError, HostAgent, HostReport, HostScript, HostSpec, InstanceObservation,
    InstanceReport, InstanceSpec, ScriptOutcome, UnitSpec, VolumeReport, VolumeSpec,
};
use tessera_core::CpuSet;
use tessera_core::HostId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How simulated hosts behave.
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Memory reported per CPU, in MiB (default 8 GiB).
    pub memory_mb_per_cpu: Option<u64>,
    /// Added to every call, to model a slow host.
    pub latency: Duration,
    pub faults: Vec<SimFault>,
    /// Where each simulated host's file system is (`DIR/<hostname>`): the
    /// scripts a host runs (taskservs) really run, with that directory as
    /// their `TESSERA_HOST_ROOT`. Default: a `tessera-sim` directory under
    /// the system's temporary directory.
    pub root_dir: Option<std::path::PathBuf>,
}

/// The kinds of host-side work a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimStep {
    Prepare,
    Activate,
    Release,
    Retire,
    CreateInstance,
    StartInstance,
    StopInstance,
    DeleteInstance,
    Script,
}

/// Makes `step` fail, or hang, on every host whose name starts with
/// `host_prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFault {
    pub step: SimStep,
    pub host_prefix: String,
    /// Never answer instead of failing: the control plane's timeout decides.
    pub hang: bool,
}

impl FromStr for SimFault {
    type Err = String;

    /// `STEP:HOSTPREFIX[:hang]`, e.g. `activate:bad-` fails key installs on
    /// hosts named `bad-*`, and `release:slow-:hang` never finishes wiping a
    /// unit on hosts named `slow-*`. Steps: prepare, activate, release,
    /// retire, create, start, stop, delete (these four act on instances),
    /// script.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(step), Some(host_prefix)) = (parts.next(), parts.next()) else {
            return Err(format!("fault {s:?} is not STEP:HOSTPREFIX[:hang]"));
        };
        let hang = match parts.next() {
            None => false,
            Some("hang") => true,
            Some(other) => return Err(format!("fault mode {other:?} is not \"hang\"")),
        };
        let step = match step {
            "prepare" => SimStep::Prepare,
            "activate" => SimStep::Activate,
            "release" => SimStep::Release,
            "retire" => SimStep::Retire,
            "create" => SimStep::CreateInstance,
            "start" => SimStep::StartInstance,
            "stop" => SimStep::StopInstance,
            "delete" => SimStep::DeleteInstance,
            "script" => SimStep::Script,
            other => {
                return Err(format!(
                    "fault step {other:?} is not one of prepare, activate, release, retire, \
                     create, start, stop, delete, script"
                ));
            }
        };
        Ok(SimFault {
            step,
            host_prefix: host_prefix.to_string(),
            hang,
        })
    }
}

const DEFAULT_MEMORY_MB_PER_CPU: u64 = 8 * 1024;

/// Every simulated host, created on first use.
pub struct SimFleet {
    config: SimConfig,
    hosts: Mutex<HashMap<HostId, Arc<SimHost>>>,
}

impl SimFleet {
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn host(&self, id: &HostId) -> Option<Arc<SimHost>> {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts.get(id).cloned()
    }

    /// The simulated host that `host` is, made on first use.
    pub fn host_for(&self, host: &HostSpec) -> Arc<SimHost> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts
            .entry(host.id.clone())
            .or_insert_with(|| Arc::new(SimHost::new(host, &self.config)))
            .clone()
    }
}

impl AgentDirectory for SimFleet {
    fn agent_for(&self, host: &HostSpec) -> Option<Arc<dyn HostAgent>> {
        Some(self.host_for(host) as Arc<dyn HostAgent>)
    }
}

/// One simulated host.
pub struct SimHost {
    hostname: String,
    ip: String,
    root: std::path::PathBuf,
    report: HostReport,
    latency: Duration,
    failing: HashSet<SimStep>,
    hanging: HashSet<SimStep>,
    state: Mutex<SimState>,
}

/// A (pretend) instance.
#[derive(Debug)]
struct SimInstance {
    cpus: CpuSet,
    /// A shared-CPU instance (its CPUs may be other shared ones' too).
    shared: bool,
    running: bool,
    /// The security groups it was made with, as a real host's firewall
    /// enforces them.
    groups: Vec<tessera_core::network::GroupRules>,
    /// The public keys it was last made or started with.
    ssh_keys: Vec<String>,
}

#[derive(Default, Debug)]
struct SimState {
    prepared: bool,
    /// Unit users that exist, with the key each holds, if any.
    users: HashMap<String, Option<String>>,
    /// The newest step done on each unit user (its fencing token).
    newest_step: HashMap<String, i64>,
    /// Instances that exist.
    instances: HashMap<String, SimInstance>,
    /// Volumes stored here, with their size in GB.
    volumes: HashMap<String, u64>,
    /// The volumes each instance was last created or started with.
    attached: HashMap<String, Vec<String>>,
}

impl SimState {
    /// Records the volumes an instance sees; each must be stored here.
    fn attach(&mut self, instance: &InstanceSpec, hostname: &str) -> Result<(), AgentError> {
        if let Some(missing) = instance
            .volumes
            .iter()
            .find(|v| !self.volumes.contains_key(&v.id))
        {
            return Err(AgentError::Failed(format!(
                "volume {} of instance {} is not stored on {hostname}",
                missing.id, instance.id
            )));
        }
        self.attached.insert(
            instance.id.clone(),
            instance.volumes.iter().map(|v| v.id.clone()).collect(),
        );
        Ok(())
    }

    /// Refuses a step older than one already done on the unit.
    fn fence(&mut self, unit: &UnitSpec, hostname: &str) -> Result<(), AgentError> {
        let newest = self
            .newest_step
            .entry(unit.user.clone())
            .or_insert(i64::MIN);
        if unit.generation < *newest {
            return Err(AgentError::Failed(format!(
                "stale step for unit user {} on {hostname} (generation {} < {})",
                unit.user, unit.generation, newest
            )));
        }
        *newest = unit.generation;
        Ok(())
    }
}

impl SimHost {
    /// The address a simulated instance has: the one its network gave it,
    /// or the host's.
    fn address_of(&self, instance: &InstanceSpec) -> String {
        instance
            .network
            .as_ref()
            .map_or_else(|| self.ip.clone(), |n| n.address.to_string())
    }

    fn new(host: &HostSpec, config: &SimConfig) -> Self {
        let per_cpu = config
            .memory_mb_per_cpu
            .unwrap_or(DEFAULT_MEMORY_MB_PER_CPU);
        let root = config
            .root_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tessera-sim"))
            .join(&host.hostname);
        Self {
            hostname: host.hostname.clone(),
            ip: host.ip.clone(),
            root,
            report: HostReport {
                cpus: host.cpus.clone(),
                numa_nodes: host.numa_nodes.clone(),
                memory_mb: host.memory_mb.unwrap_or(host.cpus.len() as u64 * per_cpu),
            },
            latency: config.latency,
            failing: faults(config, host, false),
            hanging: faults(config, host, true),
            state: Mutex::new(SimState::default()),
        }
    }

    /// The key `user` holds now, if the user exists and has one.
    pub fn installed_key(&self, user: &str) -> Option<String> {
        self.state().users.get(user).cloned().flatten()
    }

    pub fn is_prepared(&self) -> bool {
        self.state().prepared
    }

    /// Whether instance `id` exists here, and if so whether it runs.
    pub fn instance(&self, id: &str) -> Option<bool> {
        self.state().instances.get(id).map(|i| i.running)
    }

    /// The security groups instance `id` was made with here, if it is here.
    pub fn instance_groups(&self, id: &str) -> Option<Vec<tessera_core::network::GroupRules>> {
        self.state().instances.get(id).map(|i| i.groups.clone())
    }

    /// The public keys instance `id` was last made or started with here,
    /// if it is here.
    pub fn instance_ssh_keys(&self, id: &str) -> Option<Vec<String>> {
        self.state().instances.get(id).map(|i| i.ssh_keys.clone())
    }

    /// The directory that is this host's file system.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// How many instances exist here.
    pub fn instance_count(&self) -> usize {
        self.state().instances.len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn step(&self, step: SimStep) -> Result<(), AgentError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.hanging.contains(&step) {
            std::future::pending::<()>().await;
        }
        if self.failing.contains(&step) {
            return Err(AgentError::Failed(format!(
                "simulated {step:?} failure on {}",
                self.hostname
            )));
        }
        Ok(())
    }
}

fn faults(config: &SimConfig, host: &HostSpec, hang: bool) -> HashSet<SimStep> {
    config
        .faults
        .iter()
        .filter(|f| f.hang == hang && host.hostname.starts_with(&f.host_prefix))
        .map(|f| f.step)
        .collect()
}

#[async_trait::async_trait]
impl HostAgent for SimHost {
    async fn report(&self) -> Result<HostReport, AgentError> {
        Ok(self.report.clone())
    }

    async fn prepare_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        self.step(SimStep::Prepare).await?;
        let mut state = self.state();
        for unit in &host.units {
            state.users.entry(unit.user.clone()).or_insert(None);
        }
        state.prepared = true;
        Ok(())
    }

    async fn activate_unit(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError> {
        self.step(SimStep::Activate).await?;
        let mut state = self.state();
        state.fence(unit, &self.hostname)?;
        match state.users.get_mut(&unit.user) {
            Some(slot) => {
                *slot = Some(ssh_public_key.to_string());
                Ok(())
            }
            None => Err(AgentError::Failed(format!(
                "unit user {} does not exist on {}",
                unit.user, self.hostname
            ))),
        }
    }

    async fn release_unit(&self, unit: &UnitSpec) -> Result<(), AgentError> {
        self.step(SimStep::Release).await?;
        let mut state = self.state();
        state.fence(unit, &self.hostname)?;
        if let Some(slot) = state.users.get_mut(&unit.user) {
            *slot = None;
        }
        Ok(())
    }

    async fn create_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.step(SimStep::CreateInstance).await?;
        let mut state = self.state();
        if !state.prepared {
            return Err(AgentError::Failed(format!(
                "{} is not prepared",
                self.hostname
            )));
        }
        if !instance.cpus.is_subset(&self.report.cpus) {
            return Err(AgentError::Failed(format!(
                "{} has no CPUs {} (it has {})",
                self.hostname, instance.cpus, self.report.cpus
            )));
        }
        check_spec(instance)?;
        // A real host would run both; refusing catches a control plane
        // that gives one CPU twice. Shared-CPU instances share theirs.
        let shared = instance.cpu_millis.is_some();
        if let Some((other, _)) = state.instances.iter().find(|(id, other)| {
            *id != &instance.id
                && !(shared && other.shared)
                && !other.cpus.is_disjoint(&instance.cpus)
        }) {
            return Err(AgentError::Failed(format!(
                "CPUs {} of {} are already pinned to instance {other}",
                instance.cpus, self.hostname
            )));
        }
        state.attach(instance, &self.hostname)?;
        state.instances.insert(
            instance.id.clone(),
            SimInstance {
                cpus: instance.cpus.clone(),
                shared,
                running: true,
                groups: instance.security_groups.clone(),
                ssh_keys: instance.ssh_keys.clone(),
            },
        );
        Ok(InstanceReport {
            ssh_port: None,
            private_ip: self.address_of(instance),
        })
    }

    async fn start_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.step(SimStep::StartInstance).await?;
        check_spec(instance)?;
        let mut state = self.state();
        if state.instances.contains_key(&instance.id) {
            state.attach(instance, &self.hostname)?;
        }
        match state.instances.get_mut(&instance.id) {
            Some(found) => {
                found.running = true;
                found.ssh_keys = instance.ssh_keys.clone();
            }
            None => {
                return Err(AgentError::Failed(format!(
                    "instance {} does not exist on {}",
                    instance.id, self.hostname
                )));
            }
        }
        Ok(InstanceReport {
            ssh_port: None,
            private_ip: self.address_of(instance),
        })
    }

    async fn stop_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        self.step(SimStep::StopInstance).await?;
        match self.state().instances.get_mut(instance_id) {
            Some(found) => {
                found.running = false;
                Ok(())
            }
            None => Err(AgentError::Failed(format!(
                "instance {instance_id} does not exist on {}",
                self.hostname
            ))),
        }
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        self.step(SimStep::DeleteInstance).await?;
        let mut state = self.state();
        state.instances.remove(instance_id);
        state.attached.remove(instance_id);
        Ok(())
    }

    async fn ensure_volume(&self, volume: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut state = self.state();
        let size = match state.volumes.get(&volume.id) {
            Some(&had) if volume.size_gb < had => {
                return Err(AgentError::Failed(format!(
                    "volume {} has {had} GB; it cannot shrink to {}",
                    volume.id, volume.size_gb
                )));
            }
            Some(_) => volume.size_gb,
            None => match &volume.clone_of {
                Some(source) if !state.volumes.contains_key(source) => {
                    return Err(AgentError::Failed(format!(
                        "volume {source} to clone is not stored on {}",
                        self.hostname
                    )));
                }
                _ => volume.size_gb,
            },
        };
        state.volumes.insert(volume.id.clone(), size);
        Ok(VolumeReport {
            size_bytes: size << 30,
        })
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AgentError> {
        let mut state = self.state();
        // In use while an instance that has it runs.
        let running = |id: &String| state.instances.get(id).is_some_and(|i| i.running);
        if let Some((instance, _)) = state
            .attached
            .iter()
            .find(|(id, volumes)| running(id) && volumes.iter().any(|v| v == volume_id))
        {
            return Err(AgentError::Failed(format!(
                "volume {volume_id} is in use by running instance {instance}"
            )));
        }
        state.volumes.remove(volume_id);
        Ok(())
    }

    async fn run_script(&self, script: &HostScript) -> Result<ScriptOutcome, AgentError> {
        self.step(SimStep::Script).await?;
        crate::script::run(script, &self.root, &self.hostname).await
    }

    async fn retire_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        self.step(SimStep::Retire).await?;
        let mut state = self.state();
        for unit in &host.units {
            state.users.remove(&unit.user);
        }
        state.prepared = false;
        Ok(())
    }

    async fn observe_instances(&self) -> Result<Vec<InstanceObservation>, AgentError> {
        InstanceRuntime::observe(self).await
    }

    async fn open_session(
        &self,
        instance_id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        InstanceRuntime::open_session(self, instance_id, request).await
    }
}

/// Its instances, as the container driver runs real ones: through
/// [`HostAgent`]'s instance and volume calls.
#[async_trait::async_trait]
impl InstanceRuntime for SimHost {
    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.create_instance(spec).await
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.start_instance(spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), AgentError> {
        self.stop_instance(id).await
    }

    async fn delete(&self, id: &str) -> Result<(), AgentError> {
        self.delete_instance(id).await
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>, AgentError> {
        let mut list: Vec<InstanceStatus> = self
            .state()
            .instances
            .iter()
            .map(|(id, instance)| InstanceStatus {
                id: id.clone(),
                running: instance.running,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// Whether each runs, from its own state; nothing runs, so nothing is
    /// used.
    async fn observe(&self) -> Result<Vec<InstanceObservation>, AgentError> {
        let mut seen: Vec<InstanceObservation> = self
            .state()
            .instances
            .iter()
            .map(|(id, instance)| InstanceObservation {
                id: id.clone(),
                running: instance.running,
                detail: None,
                memory_used_bytes: None,
                storage_used_bytes: None,
                cpu_percent: None,
                pulling: false,
            })
            .collect();
        seen.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(seen)
    }

    /// Nothing outlives the process that simulates the host.
    async fn adopt(&self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        HostAgent::ensure_volume(self, spec).await
    }

    async fn delete_volume(&self, id: &str) -> Result<(), AgentError> {
        HostAgent::delete_volume(self, id).await
    }

    async fn open_session(
        &self,
        id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        if let Some(size) = request.tty
            && (size.rows == 0 || size.cols == 0)
        {
            return Err(AgentError::Failed(format!(
                "a terminal of {} columns and {} rows is no terminal",
                size.cols, size.rows
            )));
        }
        if self.instance(id) != Some(true) {
            return Err(AgentError::Failed(format!(
                "instance {id} is not running on {}",
                self.hostname
            )));
        }
        // One stream each way, so that closing the input alone is an end
        // of file for the shell.
        let (input, shell_input) = tokio::io::duplex(64 * 1024);
        let (shell_output, output) = tokio::io::duplex(64 * 1024);
        let tty = request.tty.map(|size| Arc::new(Mutex::new(size)));
        let task = tokio::spawn(simulated_shell(
            id.to_string(),
            request.command.clone(),
            tty.clone(),
            shell_input,
            shell_output,
        ));
        Ok(Session {
            input: Box::new(input),
            output: Box::new(output),
            control: Box::new(SimulatedControl {
                task,
                code: None,
                tty,
            }),
        })
    }
}

/// The end of a session into a simulated instance: the task that plays
/// the instance's side.
struct SimulatedControl {
    task: tokio::task::JoinHandle<i32>,
    /// Its exit code, once seen (a finished task cannot be awaited again).
    code: Option<i32>,
    /// Its terminal's size, shared with the shell, when it has one.
    tty: Option<Arc<Mutex<TtySize>>>,
}

#[async_trait::async_trait]
impl SessionControl for SimulatedControl {
    async fn wait(&mut self) -> Result<i32, AgentError> {
        if let Some(code) = self.code {
            return Ok(code);
        }
        let ended = (&mut self.task)
            .await
            .map_err(|e| AgentError::Failed(format!("the simulated session failed: {e}")))?;
        self.code = Some(ended);
        Ok(ended)
    }

    fn resize(&mut self, size: TtySize) -> Result<(), AgentError> {
        let Some(tty) = &self.tty else {
            return Err(AgentError::Failed(
                "this session has no terminal to resize (open it with one)".into(),
            ));
        };
        if size.rows == 0 || size.cols == 0 {
            return Err(AgentError::Failed(format!(
                "a terminal of {} columns and {} rows is no terminal",
                size.cols, size.rows
            )));
        }
        *tty.lock().unwrap_or_else(PoisonError::into_inner) = size;
        Ok(())
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

impl Drop for SimulatedControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the simulated shell makes of a command line.
#[derive(Debug, PartialEq, Eq)]
enum SimReply {
    /// It printed this and ended with this status.
    Ran { output: String, status: i32 },
    /// `exit`: the session ends with this code.
    Exit(i32),
}

fn simulated_command(id: &str, words: &[String], tty: Option<TtySize>) -> SimReply {
    match words.first().map(String::as_str) {
        None => SimReply::Ran {
            output: String::new(),
            status: 0,
        },
        // As on a real host: a terminal has a name and a size.
        Some("tty") => match tty {
            Some(_) => SimReply::Ran {
                output: "/dev/pts/0\n".into(),
                status: 0,
            },
            None => SimReply::Ran {
                output: "not a tty\n".into(),
                status: 1,
            },
        },
        Some("stty") if words.get(1).map(String::as_str) == Some("size") => match tty {
            Some(size) => SimReply::Ran {
                output: format!("{} {}\n", size.rows, size.cols),
                status: 0,
            },
            None => SimReply::Ran {
                output: "stty: standard input: Not a tty\n".into(),
                status: 1,
            },
        },
        Some("echo") => SimReply::Ran {
            output: format!("{}\n", words[1..].join(" ")),
            status: 0,
        },
        Some("exit") => match words.get(1).map(|code| code.parse::<i32>()) {
            None => SimReply::Exit(0),
            Some(Ok(code)) => SimReply::Exit(code),
            // As bash: a code that is not a number is a usage error.
            Some(Err(_)) => SimReply::Exit(2),
        },
        // As a shell's "command not found", saying why.
        Some(program) => SimReply::Ran {
            output: format!(
                "{program}: not run: {id} is a simulated instance, nothing runs on it\n"
            ),
            status: 127,
        },
    }
}

/// Plays the instance's side of a session: runs `command` once, or reads
/// command lines until `exit` or the end of the input (a shell's last
/// status is its exit code). With a terminal (`tty`, its size) it echoes
/// what it reads and ends lines with `\r\n`, as a terminal would.
async fn simulated_shell(
    id: String,
    command: Option<Vec<String>>,
    tty: Option<Arc<Mutex<TtySize>>>,
    reader: tokio::io::DuplexStream,
    writer: tokio::io::DuplexStream,
) -> i32 {
    let size = || {
        tty.as_ref()
            .map(|t| *t.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let mut writer = SimTerminal {
        writer,
        crlf: tty.is_some(),
    };
    if let Some(words) = command {
        return match simulated_command(&id, &words, size()) {
            SimReply::Ran { output, status } => {
                let _ = writer.write_all(output.as_bytes()).await;
                status
            }
            SimReply::Exit(code) => code,
        };
    }
    let banner = format!(
        "{id} is a simulated instance: nothing runs on it. `echo` and `exit` answer; \
         other commands are not run.\n"
    );
    let prompt = format!("{id}$ ");
    if writer.write_all(banner.as_bytes()).await.is_err() {
        return 0;
    }
    let mut status = 0;
    let mut lines = tokio::io::BufReader::new(reader).lines();
    loop {
        if writer.write_all(prompt.as_bytes()).await.is_err() {
            return status;
        }
        let Ok(Some(line)) = lines.next_line().await else {
            return status;
        };
        if writer.crlf
            && writer
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
        {
            return status;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match simulated_command(&id, &words, size()) {
            SimReply::Ran {
                output,
                status: ran,
            } => {
                status = ran;
                if writer.write_all(output.as_bytes()).await.is_err() {
                    return status;
                }
            }
            SimReply::Exit(code) => return code,
        }
    }
}

/// The simulated shell's output: with a terminal, lines end with `\r\n`.
struct SimTerminal {
    writer: tokio::io::DuplexStream,
    crlf: bool,
}

impl SimTerminal {
    async fn write_all(&mut self, text: &[u8]) -> std::io::Result<()> {
        if !self.crlf {
            return self.writer.write_all(text).await;
        }
        let text = String::from_utf8_lossy(text).replace('\n', "\r\n");
        self.writer.write_all(text.as_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ports::PortRange;
    use tessera_core::{ComputeId, CpuSet};

    fn unit(generation: i64) -> UnitSpec {
        UnitSpec {
            compute_id: ComputeId::new("h_c0-3"),
            user: "c0-3".into(),
            cpus: (0..4).collect::<CpuSet>(),
            ports: PortRange {
                start: 1500,
                end: 1999,
            },
            generation,
        }
    }

    #[tokio::test]
    async fn a_late_step_never_lands_on_the_next_tenant() {
        let spec = HostSpec {
            id: HostId::new("h"),
            hostname: "h".into(),
            ip: "192.0.2.1".into(),
            cpus: (0..4).collect(),
            numa_nodes: vec![],
            units: vec![unit(1)],
            memory_mb: None,
        };
        let fleet = SimFleet::new(SimConfig::default());
        let agent = fleet.agent_for(&spec).expect("sim agent");
        agent.prepare_host(&spec).await.expect("prepare");
        // Tenant B's allocation (generation 5) lands first...
        agent.activate_unit(&unit(5), "key-b").await.expect("b");
        // ...then tenant A's late install (generation 2) is refused.
        let late = agent.activate_unit(&unit(2), "key-a").await;
        assert!(matches!(late, Err(AgentError::Failed(_))));
        let sim = fleet.host(&HostId::new("h")).expect("sim host");
        assert_eq!(sim.installed_key("c0-3").as_deref(), Some("key-b"));
        // The same step again is fine (the control plane retries).
        agent.activate_unit(&unit(5), "key-b").await.expect("retry");
    }

    #[tokio::test]
    async fn volumes_grow_never_shrink_and_are_kept_while_in_use() {
        let spec = HostSpec {
            id: HostId::new("v"),
            hostname: "v".into(),
            ip: "192.0.2.2".into(),
            cpus: (0..4).collect(),
            numa_nodes: vec![],
            units: vec![],
            memory_mb: None,
        };
        let fleet = SimFleet::new(SimConfig::default());
        let agent = fleet.agent_for(&spec).expect("sim agent");
        agent.prepare_host(&spec).await.expect("prepare");
        let volume = |size_gb, clone_of: Option<&str>| VolumeSpec {
            id: "vol-1".into(),
            size_gb,
            clone_of: clone_of.map(str::to_string),
        };
        let made = agent.ensure_volume(&volume(2, None)).await.expect("make");
        assert_eq!(made.size_bytes, 2 << 30);
        agent.ensure_volume(&volume(2, None)).await.expect("again");
        agent.ensure_volume(&volume(3, None)).await.expect("grow");
        assert!(agent.ensure_volume(&volume(1, None)).await.is_err());
        let orphan = VolumeSpec {
            id: "vol-2".into(),
            size_gb: 1,
            clone_of: Some("nope".into()),
        };
        assert!(agent.ensure_volume(&orphan).await.is_err());
        let mut instance = InstanceSpec {
            id: "inst-1".into(),
            name: "i".into(),
            project_id: "p".into(),
            cpus: (0..1).collect(),
            memory_mb: 128,
            disk_gb: 1,
            image: "tiny".into(),
            ssh_keys: vec![],
            user_data: None,
            volumes: vec![tessera_agent_api::AttachedVolume {
                id: "vol-9".into(),
                target: "vdb".into(),
            }],
            cpu_millis: None,
            ssh_forward: true,
            egress: true,
            privileged: false,
            network: None,
            image_ref: None,
            security_groups: Vec::new(),
            workload: None,
            sealed_workload: None,
            storage: None,
        };
        // A volume that is not stored here cannot be attached.
        assert!(agent.create_instance(&instance).await.is_err());
        instance.volumes[0].id = "vol-1".into();
        agent.create_instance(&instance).await.expect("create");
        assert!(agent.delete_volume("vol-1").await.is_err(), "in use");
        agent.stop_instance("inst-1").await.expect("stop");
        agent
            .delete_volume("vol-1")
            .await
            .expect("delete once stopped");
        agent.delete_volume("vol-1").await.expect("gone already");
        assert!(agent.start_instance(&instance).await.is_err());
    }

    fn tiny_instance(id: &str) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            name: id.into(),
            project_id: "p".into(),
            cpus: (0..1).collect(),
            memory_mb: 128,
            disk_gb: 1,
            image: "tiny".into(),
            ssh_keys: vec![],
            user_data: None,
            volumes: vec![],
            cpu_millis: None,
            ssh_forward: true,
            egress: true,
            privileged: false,
            network: None,
            image_ref: None,
            security_groups: Vec::new(),
            workload: None,
            sealed_workload: None,
            storage: None,
        }
    }

    fn prepared_host(name: &str) -> Arc<SimHost> {
        let spec = HostSpec {
            id: HostId::new(name),
            hostname: name.into(),
            ip: "192.0.2.3".into(),
            cpus: (0..4).collect(),
            numa_nodes: vec![],
            units: vec![],
            memory_mb: None,
        };
        let fleet = SimFleet::new(SimConfig::default());
        let host = fleet.host_for(&spec);
        host.state().prepared = true;
        host
    }

    fn shell() -> SessionRequest {
        SessionRequest::default()
    }

    fn run(words: &[&str]) -> SessionRequest {
        SessionRequest {
            command: Some(words.iter().map(|w| w.to_string()).collect()),
            tty: None,
        }
    }

    #[tokio::test]
    async fn a_session_into_a_simulated_instance_says_it_is_simulated() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = prepared_host("s");
        let runtime: &dyn InstanceRuntime = host.as_ref();
        assert!(
            runtime.open_session("i-1", &shell()).await.is_err(),
            "no instance"
        );
        runtime.create(&tiny_instance("i-1")).await.expect("create");
        assert_eq!(
            runtime.list().await.expect("list"),
            vec![InstanceStatus {
                id: "i-1".into(),
                running: true
            }]
        );

        let mut session = runtime
            .open_session("i-1", &shell())
            .await
            .expect("session");
        assert!(session.control.is_simulated());
        session
            .input
            .write_all(b"echo hello   there\nuname -a\ntty\nexit 4\necho never\n")
            .await
            .expect("typing");
        let mut out = String::new();
        session
            .output
            .read_to_string(&mut out)
            .await
            .expect("reading");
        assert!(out.starts_with("i-1 is a simulated instance"), "{out}");
        assert!(out.contains("hello there\n"), "{out}");
        assert!(out.contains("uname: not run"), "{out}");
        assert!(out.contains("not a tty"), "{out}");
        assert!(!out.contains("never"), "{out}");
        assert_eq!(session.control.wait().await.expect("exit"), 4);
        assert_eq!(session.control.wait().await.expect("exit again"), 4);
        assert!(
            session
                .control
                .resize(TtySize {
                    cols: 100,
                    rows: 30
                })
                .is_err(),
            "no terminal to resize"
        );

        // One command, and the end of the input ends the shell.
        let mut session = runtime
            .open_session("i-1", &run(&["ls", "/"]))
            .await
            .expect("command");
        let mut out = String::new();
        session
            .output
            .read_to_string(&mut out)
            .await
            .expect("reading");
        assert!(out.contains("ls: not run"), "{out}");
        assert_eq!(session.control.wait().await.expect("exit"), 127);
        let mut session = runtime
            .open_session("i-1", &shell())
            .await
            .expect("session");
        drop(session.input);
        assert_eq!(
            session.control.wait().await.expect("exit at end of input"),
            0
        );

        runtime.stop("i-1").await.expect("stop");
        assert!(
            runtime.open_session("i-1", &shell()).await.is_err(),
            "a stopped instance has no sessions"
        );
    }

    #[tokio::test]
    async fn a_simulated_terminal_has_a_size_that_changes() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let host = prepared_host("t");
        host.create_instance(&tiny_instance("i-1"))
            .await
            .expect("create");
        let request = SessionRequest {
            command: None,
            tty: Some(TtySize { cols: 80, rows: 24 }),
        };
        let mut session = HostAgent::open_session(host.as_ref(), "i-1", &request)
            .await
            .expect("session");
        let mut output = tokio::io::BufReader::new(session.output);
        // Reads up to the next line that holds `want`.
        async fn line_with(
            output: &mut (impl tokio::io::AsyncBufRead + Unpin),
            want: &str,
        ) -> String {
            loop {
                let mut line = String::new();
                let n = output.read_line(&mut line).await.expect("reading");
                assert!(n > 0, "the output ended before {want:?}");
                if line.contains(want) {
                    return line;
                }
            }
        }
        session.input.write_all(b"tty\n").await.expect("typing");
        session
            .input
            .write_all(b"stty size\n")
            .await
            .expect("typing");
        assert_eq!(line_with(&mut output, "/dev/").await, "/dev/pts/0\r\n");
        let echoed = line_with(&mut output, "stty size").await;
        assert!(echoed.ends_with("stty size\r\n"), "{echoed:?}");
        assert_eq!(line_with(&mut output, "24").await, "24 80\r\n");
        session
            .control
            .resize(TtySize {
                cols: 132,
                rows: 50,
            })
            .expect("resize");
        session
            .input
            .write_all(b"stty size\n")
            .await
            .expect("typing");
        assert_eq!(line_with(&mut output, "50").await, "50 132\r\n");
        assert!(
            session
                .control
                .resize(TtySize { cols: 0, rows: 50 })
                .is_err()
        );
        session.input.write_all(b"exit 0\n").await.expect("typing");
        assert_eq!(session.control.wait().await.expect("exit"), 0);
    }

    #[tokio::test]
    async fn shared_cpu_instances_share_cpus_and_are_observed() {
        let host = prepared_host("o");
        let shared = |id: &str| InstanceSpec {
            cpu_millis: Some(500),
            ..tiny_instance(id)
        };
        host.create_instance(&shared("i-1")).await.expect("one");
        host.create_instance(&shared("i-2"))
            .await
            .expect("two on the same CPU");
        let e = host
            .create_instance(&tiny_instance("i-3"))
            .await
            .expect_err("an exclusive instance on a shared CPU");
        assert!(e.to_string().contains("already pinned"), "{e}");
        let too_much = InstanceSpec {
            cpu_millis: Some(1500),
            ..tiny_instance("i-4")
        };
        assert!(
            host.create_instance(&too_much).await.is_err(),
            "1.5 of 1 CPU"
        );
        host.stop_instance("i-2").await.expect("stop");
        let seen = host.observe_instances().await.expect("observe");
        let running: Vec<(&str, bool)> = seen.iter().map(|o| (o.id.as_str(), o.running)).collect();
        assert_eq!(running, vec![("i-1", true), ("i-2", false)]);
        assert!(seen.iter().all(|o| o.memory_used_bytes.is_none()));
    }
}
