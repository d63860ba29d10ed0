//! The raft node: one task owns the `RawNode`, fed by a channel of
//! proposals and peer messages and ticked on a timer; its ready loop
//! follows raft-rs's `examples/five_mem_node` step by step, with the log on
//! disk ([`RaftStore`]).
//!
//! Proposals may be made on any node: raft-rs forwards a follower's
//! proposal to the leader, and the proposer learns the outcome when it
//! applies the entry carrying its proposal id (entry context). A proposal
//! made while no leader is known fails at once with
//! [`NodeError::NoLeader`]; one lost on the way (leader change) times out.

use crate::state::StateMachine;
use crate::storage::{RaftStore, StoreError};
use crate::transport::{NetFilter, Report, Transport};
use broker_proto::v1::{ClusterCommand, ClusterState, RaftStatus};
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole, Storage};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long a proposal may wait to be applied before its caller gives up
/// (and retries, possibly on another node).
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Store key of the peer addresses (JSON map raft id -> address).
const PEERS_KEY: &str = "peers";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Raft id -> cluster-ctl gRPC address, this node included.
    pub peers: BTreeMap<u64, String>,
    pub join_existing: bool,
    pub data_dir: PathBuf,
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    pub snapshot_every: u64,
    /// TLS and token of the channels to raft peers.
    pub security: broker_common::security::ClientSecurity,
}

impl NodeConfig {
    pub fn from_config(
        c: &broker_common::config::ClusterCtlConfig,
        own_addr: &str,
        security: &broker_common::security::ClientSecurity,
    ) -> Self {
        let mut peers: BTreeMap<u64, String> =
            c.peers.iter().map(|p| (p.id, p.addr.clone())).collect();
        peers.entry(c.id).or_insert_with(|| own_addr.to_string());
        Self {
            id: c.id,
            peers,
            join_existing: c.join_existing,
            data_dir: PathBuf::from(&c.data_dir),
            tick: c.tick,
            heartbeat_ticks: c.heartbeat_ticks,
            election_ticks: c.election_ticks,
            snapshot_every: c.snapshot_every,
            security: security.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("no raft leader is known (election in progress or no quorum)")]
    NoLeader,
    #[error("the change was not committed within {0:?} (leader changed or no quorum)")]
    Timeout(Duration),
    /// The leader changed before the proposal was applied; it may or may
    /// not commit under the new leader. Commands are idempotent, so the
    /// caller retries.
    #[error("the raft leader changed before the change was applied; retry")]
    LeaderChanged,
    #[error("raft refused the proposal: {0}")]
    Refused(String),
    #[error("the raft node has stopped")]
    Stopped,
    #[error("{0}")]
    Invalid(String),
}

enum Input {
    Raft(Vec<Message>),
    Report(Report),
    Propose {
        cmd: ClusterCommand,
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    ConfChange {
        change: ConfChange,
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    TransferLeader(u64),
}

/// A handle on the running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    id: u64,
    input: mpsc::Sender<Input>,
    state: watch::Receiver<Arc<ClusterState>>,
    view: watch::Receiver<Arc<RaftStatus>>,
    filter: NetFilter,
    stopped: CancellationToken,
}

/// The node's stored raft state cannot be read back (a disk fault, a
/// file written by something else): not a configuration problem, and not
/// one a restart fixes. The process stays up refusing cluster-ctl calls
/// (not ready) until an operator repairs it; `cluster_ctl.resync_damaged`
/// does that by moving the directory aside and fetching the state from the
/// leader.
#[derive(Debug, thiserror::Error)]
#[error(
    "the raft state stored in {} cannot be read ({reason}): this node refuses cluster-ctl calls \
     until it is repaired. Start it once with cluster_ctl.resync_damaged: true \
     (BROKER_CLUSTER_CTL__RESYNC_DAMAGED=true), which moves that directory aside and fetches the \
     state from the leader, or move it aside yourself and start it with the same cluster_ctl.id \
     and peers (README, \"Membership (cluster-ctl)\")",
    data_dir.display()
)]
pub struct Damaged {
    pub data_dir: PathBuf,
    pub reason: String,
}

impl Node {
    /// Opens the store in `config.data_dir` (bootstrapping a new cluster
    /// from `config.peers` when it is empty, unless `join_existing`),
    /// restores the state from the last snapshot and starts the raft task.
    /// The task stops when `stop` is cancelled. A store that cannot be
    /// read back is a [`Damaged`] error.
    pub fn start(config: NodeConfig, stop: CancellationToken) -> anyhow::Result<Node> {
        let damaged = |reason: String| {
            anyhow::Error::new(Damaged {
                data_dir: config.data_dir.clone(),
                reason,
            })
        };
        let store_err = |e: StoreError| {
            if e.is_damage() {
                damaged(broker_common::error_chain(&e))
            } else {
                anyhow::Error::new(e)
            }
        };
        let store = RaftStore::open(&config.data_dir).map_err(store_err)?;
        let mut peers = config.peers.clone();
        let restarted = store.is_initialized();
        let sm = if restarted {
            if let Some(p) = store.meta(PEERS_KEY).map_err(store_err)? {
                peers = serde_json::from_slice(&p)
                    .map_err(|e| damaged(format!("the stored peer addresses: {e}")))?;
            }
            let mut sm = StateMachine::new(peers.clone());
            let snapshot = store.stored_snapshot().map_err(store_err)?;
            sm.restore(&snapshot.data)
                .map_err(|e| damaged(format!("the stored snapshot: {e}")))?;
            peers = sm.peers().clone();
            sm
        } else {
            if !config.join_existing {
                // A new cluster: every configured peer is a voter. The
                // bootstrap snapshot (index 1, term 1) carries the voters,
                // so a node added later gets them from a snapshot too.
                let mut s = Snapshot::default();
                s.mut_metadata().index = 1;
                s.mut_metadata().term = 1;
                s.mut_metadata().mut_conf_state().voters = peers.keys().copied().collect();
                store.apply_snapshot(s)?;
                store.set_meta(PEERS_KEY, &serde_json::to_vec(&peers)?)?;
            }
            StateMachine::new(peers.clone())
        };
        let applied = store.snapshot_index();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = crate::raft_log::logger(config.id);
        let raw = RawNode::new(&raft_config, store.clone(), &logger).map_err(|e| {
            if restarted {
                damaged(format!("raft cannot start from it: {e}"))
            } else {
                anyhow::Error::new(e)
            }
        })?;
        tracing::info!(
            raft_id = config.id,
            restarted,
            applied,
            epoch = sm.state().epoch,
            peers = ?peers,
            "raft node starting"
        );

        let (input_tx, input_rx) = mpsc::channel(4096);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let filter = NetFilter::default();
        let mut transport = Transport::new(
            config.id,
            filter.clone(),
            report_tx,
            config.security.clone(),
        );
        transport.set_peers(&peers);
        let (state_tx, state_rx) = watch::channel(Arc::new(sm.state().clone()));
        let (view_tx, view_rx) = watch::channel(Arc::new(RaftStatus::default()));
        let stopped = CancellationToken::new();
        let task = Task {
            raw,
            store,
            sm,
            transport,
            pending: HashMap::new(),
            next_proposal: 0,
            state_tx,
            view_tx,
            snapshot_every: config.snapshot_every,
            snapshot_now: false,
            applied: Vec::new(),
        };
        task.publish_view();
        let done = stopped.clone();
        let tick = config.tick;
        // The node runs on its own thread: every ready ends in a redb
        // commit with an fsync, which must not block a worker of the
        // process's runtime (gRPC, the data path). Its transport sends on
        // the process's runtime.
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", config.id))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the raft thread's runtime");
                        done.cancel();
                        return;
                    }
                };
                rt.block_on(run_node(task, input_rx, report_rx, tick, stop, done));
            });
        if let Err(e) = thread {
            anyhow::bail!("cannot start the raft thread: {e}");
        }
        Ok(Node {
            id: config.id,
            input: input_tx,
            state: state_rx,
            view: view_rx,
            filter,
            stopped,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The applied state; changes with every committed change.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    pub fn view(&self) -> Arc<RaftStatus> {
        self.view.borrow().clone()
    }

    pub fn view_watch(&self) -> watch::Receiver<Arc<RaftStatus>> {
        self.view.clone()
    }

    /// The partition switch of this node (tests).
    pub fn net_filter(&self) -> &NetFilter {
        &self.filter
    }

    /// Resolves when the raft task has ended.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    /// Hands peer messages to the node.
    pub async fn step(&self, messages: Vec<Message>) -> Result<(), NodeError> {
        self.input
            .send(Input::Raft(messages))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Proposes `cmd` and waits until this node has applied it; returns its
    /// log index.
    pub async fn propose(&self, cmd: ClusterCommand) -> Result<u64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.input
            .send(Input::Propose { cmd, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.wait(rx).await
    }

    /// Adds voter `id` at `addr` (a cluster-ctl gRPC address).
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<u64, NodeError> {
        if id == 0 {
            return Err(NodeError::Invalid("raft id 0 is reserved".into()));
        }
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(NodeError::Invalid(format!(
                "voter addr {addr:?} must be http://host:port"
            )));
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        cc.context = addr.as_bytes().to_vec().into();
        self.conf_change(cc).await
    }

    /// Removes voter `id`. The leader hands leadership to another voter
    /// before it removes itself (the caller retries meanwhile).
    pub async fn remove_voter(&self, id: u64) -> Result<u64, NodeError> {
        let view = self.view();
        if !view.voters.contains(&id) {
            return Err(NodeError::Invalid(format!(
                "raft id {id} is not a voter (voters: {:?})",
                view.voters
            )));
        }
        if view.voters.len() == 1 {
            return Err(NodeError::Invalid(
                "cannot remove the last voter".to_string(),
            ));
        }
        if view.leader_id == id {
            let to = *view
                .voters
                .iter()
                .find(|&&v| v != id)
                .expect("another voter");
            let _ = self.input.send(Input::TransferLeader(to)).await;
            return Err(NodeError::NoLeader);
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        self.conf_change(cc).await
    }

    async fn conf_change(&self, change: ConfChange) -> Result<u64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.input
            .send(Input::ConfChange { change, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.wait(rx).await
    }

    async fn wait(&self, rx: oneshot::Receiver<Result<u64, NodeError>>) -> Result<u64, NodeError> {
        match tokio::time::timeout(PROPOSAL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout(PROPOSAL_TIMEOUT)),
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Result<u64, NodeError>>,
    since: Instant,
    /// The leader this node knew when it proposed.
    leader: u64,
}

struct Task {
    raw: RawNode<RaftStore>,
    store: RaftStore,
    sm: StateMachine,
    transport: Transport,
    /// Proposals of this node not yet applied, by proposal id.
    pending: HashMap<u64, Pending>,
    next_proposal: u64,
    state_tx: watch::Sender<Arc<ClusterState>>,
    view_tx: watch::Sender<Arc<RaftStatus>>,
    snapshot_every: u64,
    /// Set when a voter was added: the next snapshot must list it, since
    /// raft-rs refuses a snapshot whose configuration lacks the receiver,
    /// and a new voter catches up from a snapshot.
    snapshot_now: bool,
    /// Proposals applied in this round, answered once the state and the
    /// view show them.
    applied: Vec<(oneshot::Sender<Result<u64, NodeError>>, u64)>,
}

/// Runs the raft task until it stops, then says the node stopped.
async fn run_node(
    mut task: Task,
    input: mpsc::Receiver<Input>,
    reports: mpsc::UnboundedReceiver<Report>,
    tick: Duration,
    stop: CancellationToken,
    done: CancellationToken,
) {
    use futures::FutureExt;
    // A panic inside raft-rs (a message it cannot take) must not leave a
    // process that serves with a dead node: the node is then stopped,
    // readiness drops, and the process exits (see `ClusterCtl::died`) so
    // its supervisor restarts it from disk.
    let run = std::panic::AssertUnwindSafe(task.run(input, reports, tick, stop));
    if let Err(panic) = run.catch_unwind().await {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        tracing::error!(panic = what, "the raft task panicked; the node stops");
    }
    // Close the redb store (the task and its RawNode hold it) before anyone
    // hears the node stopped: a restart in the same process opens the same
    // file, and redb refuses a second open.
    drop(task);
    done.cancel();
}

impl Task {
    async fn run(
        &mut self,
        mut input: mpsc::Receiver<Input>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        tick: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire_pending();
                }
                Some(i) = input.recv() => {
                    self.handle(i);
                    // Take what else is queued before the next ready.
                    for _ in 0..256 {
                        match input.try_recv() {
                            Ok(i) => self.handle(i),
                            Err(_) => break,
                        }
                    }
                }
                Some(r) = reports.recv() => self.handle(Input::Report(r)),
            }
            if let Err(e) = self.on_ready() {
                // The log could not be made durable: stop rather than
                // acknowledge what is not on disk.
                tracing::error!(raft_id = self.raw.raft.id, error = %e, "raft storage failed, stopping the node");
                break;
            }
            self.publish_view();
            for (reply, index) in self.applied.drain(..) {
                let _ = reply.send(Ok(index));
            }
            self.fail_orphaned();
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(NodeError::Stopped));
        }
        tracing::info!(raft_id = self.raw.raft.id, "raft node stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(msgs) => {
                for mut m in msgs {
                    if let Some(behind) = self.lost_log(&mut m) {
                        // Step the heartbeat as far as this log goes (it
                        // learns the leader and term), then ask for the
                        // state by snapshot: raft-rs's leader believes this
                        // node holds what it had acknowledged and would
                        // never send it again.
                        if let Err(e) = self.raw.step(m) {
                            tracing::debug!(error = %e, "raft step");
                        }
                        self.request_snapshot(behind);
                        continue;
                    }
                    if let Some(why) = refuse(&self.raw.raft, &m) {
                        tracing::warn!(from = m.from, kind = ?m.get_msg_type(), why, "raft message dropped");
                        continue;
                    }
                    if let Err(why) = refuse_content(&self.raw.raft, &self.sm, &m) {
                        tracing::warn!(from = m.from, kind = ?m.get_msg_type(), why, "raft message dropped");
                        continue;
                    }
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(error = %e, "raft step");
                    }
                }
            }
            Input::Report(Report::Unreachable(id)) => self.raw.report_unreachable(id),
            Input::Report(Report::Snapshot { to, ok }) => self.raw.report_snapshot(
                to,
                if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                },
            ),
            Input::Propose { cmd, reply } => {
                let id = self.proposal_id();
                let r = self
                    .raw
                    .propose(id.to_le_bytes().to_vec(), cmd.encode_to_vec());
                self.track(id, r, reply);
            }
            Input::ConfChange { change, reply } => {
                let id = self.proposal_id();
                let r = self
                    .raw
                    .propose_conf_change(id.to_le_bytes().to_vec(), change);
                self.track(id, r, reply);
            }
            Input::TransferLeader(to) => self.raw.transfer_leader(to),
        }
    }

    fn proposal_id(&mut self) -> u64 {
        self.next_proposal += 1;
        // Unique across nodes: a forwarded proposal is applied everywhere.
        (self.raw.raft.id << 48) | (self.next_proposal & ((1 << 48) - 1))
    }

    fn track(
        &mut self,
        id: u64,
        r: raft::Result<()>,
        reply: oneshot::Sender<Result<u64, NodeError>>,
    ) {
        match r {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        reply,
                        since: Instant::now(),
                        leader: self.raw.raft.leader_id,
                    },
                );
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(NodeError::NoLeader));
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::Refused(e.to_string())));
            }
        }
    }

    /// A proposal made under another leader may have been lost with it
    /// (a follower forwards proposals to the leader it knows): answer it
    /// now so the caller retries under the new leader instead of waiting
    /// for its timeout.
    fn fail_orphaned(&mut self) {
        let leader = self.raw.raft.leader_id;
        let orphaned: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.leader != leader)
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(NodeError::LeaderChanged));
            }
        }
    }

    fn expire_pending(&mut self) {
        self.pending
            .retain(|_, p| p.since.elapsed() < PROPOSAL_TIMEOUT * 2 && !p.reply.is_closed());
    }

    fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.store.apply_snapshot(snap.clone())?;
            self.sm.restore(&snap.data)?;
            self.peers_changed()?;
            self.state_tx
                .send_replace(Arc::new(self.sm.state().clone()));
            tracing::info!(
                index = snap.get_metadata().index,
                epoch = self.sm.state().epoch,
                "installed snapshot from the leader"
            );
        }
        self.apply(ready.take_committed_entries())?;
        // Entries and hard state in one fsync.
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.store.persist_ready(ready.entries(), ready.hs())?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let mut changed = false;
        for entry in entries {
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryConfChange if !entry.data.is_empty() => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)?;
                    match self.raw.apply_conf_change(&cc) {
                        Ok(cs) => self.conf_changed(&cc, &cs)?,
                        // A change raft cannot apply (e.g. one that would
                        // leave no voter) is skipped by every node alike.
                        Err(e) => tracing::error!(
                            index,
                            change = ?cc.get_change_type(),
                            node = cc.node_id,
                            error = %e,
                            "conf change not applied"
                        ),
                    }
                }
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    match ClusterCommand::decode(&entry.data[..]) {
                        Ok(cmd) => changed |= self.sm.apply(index, &cmd),
                        Err(e) => tracing::error!(index, error = %e, "undecodable entry skipped"),
                    }
                }
                _ => {}
            }
            if entry.context.len() == 8 {
                let id = u64::from_le_bytes(entry.context[..].try_into().expect("8 bytes"));
                if let Some(p) = self.pending.remove(&id) {
                    self.applied.push((p.reply, index));
                }
            }
        }
        if changed {
            let state = Arc::new(self.sm.state().clone());
            tracing::info!(
                epoch = state.epoch,
                members = state.members.len(),
                "cluster state changed"
            );
            self.state_tx.send_replace(state);
        } else {
            // applied_index moved; the epoch did not.
            let applied = self.sm.state().applied_index;
            self.state_tx.send_if_modified(|s| {
                if s.applied_index != applied {
                    Arc::make_mut(s).applied_index = applied;
                }
                false
            });
        }
        Ok(())
    }

    /// Records an applied conf change: the configuration, and the peer
    /// address it carries (added) or drops (removed).
    fn conf_changed(&mut self, cc: &ConfChange, cs: &ConfState) -> anyhow::Result<()> {
        self.store.set_conf_state(cs)?;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let addr = String::from_utf8_lossy(&cc.context).into_owned();
                if !addr.is_empty() {
                    self.sm.set_peer(cc.node_id, addr);
                }
                self.snapshot_now = true;
            }
            ConfChangeType::RemoveNode => self.sm.remove_peer(cc.node_id),
        }
        self.peers_changed()?;
        tracing::info!(
            change = ?cc.get_change_type(),
            node = cc.node_id,
            voters = ?cs.voters,
            "raft configuration changed"
        );
        Ok(())
    }

    fn peers_changed(&mut self) -> anyhow::Result<()> {
        let peers = self.sm.peers().clone();
        self.store
            .set_meta(PEERS_KEY, &serde_json::to_vec(&peers)?)?;
        self.transport.set_peers(&peers);
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let applied = self.raw.raft.raft_log.applied;
        if applied > self.store.snapshot_index()
            && (self.snapshot_now || applied >= self.store.snapshot_index() + self.snapshot_every)
        {
            self.snapshot_now = false;
            let cs: ConfState = self.raw.raft.prs().conf().to_conf_state();
            self.store
                .snapshot_and_compact(applied, &cs, self.sm.snapshot())?;
            tracing::info!(index = applied, "raft snapshot taken, log compacted");
        }
        Ok(())
    }

    fn publish_view(&self) {
        let r = &self.raw.raft;
        let conf = r.prs().conf().to_conf_state();
        let view = RaftStatus {
            id: r.id,
            role: match r.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            }
            .to_string(),
            term: r.term,
            leader_id: r.leader_id,
            commit_index: r.raft_log.committed,
            applied_index: r.raft_log.applied,
            last_index: self.store.last_index().unwrap_or_default(),
            snapshot_index: self.store.snapshot_index(),
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            peers: self.sm.peers().clone(),
            epoch: self.sm.state().epoch,
        };
        self.view_tx.send_if_modified(|v| {
            if **v != view {
                *v = Arc::new(view);
                true
            } else {
                false
            }
        });
    }
}

/// When `m` is a heartbeat of a leader (at this node's term or a later
/// one) committing past this node's last index, this node has lost log it
/// had acknowledged: its data_dir was moved aside and it started empty
/// (`cluster_ctl.resync_damaged`), or its disk lost writes. The heartbeat's
/// commit is lowered to the last index (raft-rs asserts it is in range; the
/// message can then be stepped) and the leader's commit returned, for a
/// snapshot request. `None` for every other message, left as it is.
pub fn lost_log<S: raft::Storage>(raft: &raft::Raft<S>, m: &mut Message) -> Option<u64> {
    let last = raft.raft_log.last_index();
    if m.get_msg_type() != raft::eraftpb::MessageType::MsgHeartbeat
        || m.commit <= last
        || m.term < raft.term
        || m.from == 0
    {
        return None;
    }
    let behind = m.commit;
    m.commit = last;
    Some(behind)
}

impl Task {
    fn lost_log(&self, m: &mut Message) -> Option<u64> {
        lost_log(&self.raw.raft, m)
    }

    /// Asks the leader for a snapshot, as raft-rs's own request does (a
    /// rejected append carrying `request_snapshot`): its own requires the
    /// last entry to be of the current term, which an emptied log's is not.
    /// The leader then sends its stored snapshot (any index from 1) and the
    /// entries after it.
    fn request_snapshot(&mut self, leader_commit: u64) {
        let raft = &self.raw.raft;
        if raft.leader_id == 0 {
            return;
        }
        let last = raft.raft_log.last_index();
        let mut r = Message::default();
        r.set_msg_type(raft::eraftpb::MessageType::MsgAppendResponse);
        r.from = raft.id;
        r.to = raft.leader_id;
        r.term = raft.term;
        r.index = leader_commit;
        r.reject = true;
        r.reject_hint = last;
        r.log_term = raft.raft_log.term(last).unwrap_or(0);
        r.request_snapshot = 1;
        tracing::info!(
            leader = r.to,
            last_index = last,
            leader_commit,
            "this node's raft log is behind what the leader believes it holds; asking for a snapshot"
        );
        self.transport.send(vec![r]);
    }
}

/// Why raft-rs would panic on `m` rather than refuse it, if it would: a
/// leader never sends such a message, a buggy or forged peer might, and
/// one message must not kill the node. Checked before every step (and by
/// the `raft_send` fuzz target, which looks for more):
/// - a heartbeat committing past the last index (`commit_to` asserts it is
///   in range);
/// - an append whose entries are not numbered on from its index
///   (`maybe_append` slices the entries by index), or that has an entry
///   without a term or no term for its previous entry: raft-rs reads the
///   term of an index past its log as 0, takes the append, and commits
///   past its last index (`commit_to` asserts it does not);
/// - an empty proposal (`stepped empty MsgProp`);
/// - a message from raft id 0, or whose term does not match its kind:
///   raft-rs sends every message with its term except proposals and read
///   indexes, which a follower forwards to its leader as they are, and
///   asserts so when it sends; it takes a message without a term as a
///   local one;
/// - a leader transfer to a node that is not the leader (it would forward
///   it, with its term).
pub fn refuse<S: raft::Storage>(
    raft: &raft::Raft<S>,
    m: &raft::eraftpb::Message,
) -> Option<&'static str> {
    use raft::eraftpb::MessageType;
    let log = &raft.raft_log;
    let kind = m.get_msg_type();
    let forwarded = matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if m.from == 0 {
        return Some("a message from raft id 0");
    }
    if forwarded && m.term != 0 {
        return Some("a forwarded proposal or read index carries a term");
    }
    if !forwarded && m.term == 0 {
        return Some("a peer's message without a term");
    }
    match kind {
        MessageType::MsgHeartbeat if m.commit > log.last_index() => {
            Some("the heartbeat commits past this node's last index")
        }
        MessageType::MsgAppend => {
            let numbered = m
                .entries
                .iter()
                .enumerate()
                .all(|(i, e)| Some(e.index) == m.index.checked_add(i as u64 + 1));
            if !numbered {
                return Some("the append's entries are not numbered on from its index");
            }
            if m.entries.iter().any(|e| e.term == 0) {
                return Some("the append has an entry without a term");
            }
            (m.index != 0 && m.log_term == 0)
                .then_some("the append has no term for the entry before its own")
        }
        MessageType::MsgPropose if m.entries.is_empty() => Some("the proposal is empty"),
        MessageType::MsgTransferLeader if raft.state != raft::StateRole::Leader => {
            Some("a leader transfer sent to a node that is not the leader")
        }
        _ => None,
    }
}

/// Why `m` carries something this node must not persist, checked before
/// raft-rs sees it: what raft-rs takes is made durable, and a snapshot or
/// entry that cannot be applied would stop the node on every start.
///
/// - A snapshot must come from this term's leader (a leader sends appends
///   or heartbeats first, so an honest snapshot never opens a term), hold a
///   `ClusterSnapshot` that decodes, name this node among its voters, give
///   every voter an address, and not take the ring epoch backwards. Only
///   the bootstrap snapshot (index 1) may be empty.
/// - An append's entries must decode: commands as `ClusterCommand`,
///   configuration changes as `ConfChange` (this cluster proposes no
///   joint changes).
pub fn refuse_content<S: raft::Storage>(
    raft: &raft::Raft<S>,
    sm: &StateMachine,
    m: &raft::eraftpb::Message,
) -> Result<(), String> {
    use raft::eraftpb::MessageType;
    match m.get_msg_type() {
        MessageType::MsgSnapshot => {
            if m.term != raft.term || m.from != raft.leader_id {
                return Err(format!(
                    "a snapshot from {} at term {}, not from this term's leader ({} at term {})",
                    m.from, m.term, raft.leader_id, raft.term
                ));
            }
            if m.get_snapshot().get_metadata().term > m.term {
                return Err("a snapshot of a term after its message's".into());
            }
            check_snapshot(raft.id, sm, m.get_snapshot())
        }
        MessageType::MsgAppend => m.entries.iter().try_for_each(check_entry),
        _ => Ok(()),
    }
}

/// A snapshot this node (`id`) could install and apply; see [`refuse_content`].
pub fn check_snapshot(id: u64, sm: &StateMachine, snap: &Snapshot) -> Result<(), String> {
    let meta = snap.get_metadata();
    // raft-rs takes a term of 0 as matching any index past its log, then
    // stops the process committing past it.
    if meta.index == 0 || meta.term == 0 {
        return Err(format!(
            "a snapshot at index {} and term {}",
            meta.index, meta.term
        ));
    }
    let cs = meta.get_conf_state();
    let voters = &cs.voters;
    if !voters.contains(&id) {
        return Err(format!(
            "a snapshot whose voters {voters:?} leave this node ({id}) out"
        ));
    }
    // A configuration raft-rs can restore as it is (it stops the process
    // on one that does not round-trip): this cluster makes no joint
    // changes, and ids are non-zero and appear once.
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave {
        return Err("a snapshot with a joint configuration, which this cluster never makes".into());
    }
    let mut ids: Vec<u64> = voters.iter().chain(&cs.learners).copied().collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    if ids.len() != n || ids.contains(&0) {
        return Err(format!(
            "a snapshot whose voters {voters:?} and learners {:?} repeat an id or hold id 0",
            cs.learners
        ));
    }
    if snap.data.is_empty() {
        return if meta.index <= 1 {
            Ok(())
        } else {
            Err(format!("a snapshot at index {} without data", meta.index))
        };
    }
    let decoded = broker_proto::v1::ClusterSnapshot::decode(&snap.data[..])
        .map_err(|e| format!("a snapshot whose data is not a cluster state: {e}"))?;
    if let Some(v) = voters.iter().find(|v| !decoded.peers.contains_key(v)) {
        return Err(format!("a snapshot with voter {v} but no address for it"));
    }
    let epoch = decoded.state.as_ref().map_or(0, |s| s.epoch);
    if epoch < sm.state().epoch {
        return Err(format!(
            "a snapshot at ring epoch {epoch}, behind this node's {}",
            sm.state().epoch
        ));
    }
    Ok(())
}

fn check_entry(e: &Entry) -> Result<(), String> {
    if e.data.is_empty() {
        return Ok(());
    }
    match e.get_entry_type() {
        EntryType::EntryNormal => ClusterCommand::decode(&e.data[..])
            .map(drop)
            .map_err(|err| format!("entry {} is not a cluster command: {err}", e.index)),
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data)
            .map(drop)
            .map_err(|err| format!("entry {} is not a configuration change: {err}", e.index)),
        EntryType::EntryConfChangeV2 => Err(format!(
            "entry {} is a joint configuration change, which this cluster never proposes",
            e.index
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::refuse;
    use raft::eraftpb::{ConfState, Entry, HardState, Message, MessageType};
    use raft::storage::MemStorage;
    use raft::{Config, RawNode};

    /// A follower (id 2) of voters 1..=3: entries 1..=5 at term 2, 3
    /// committed.
    fn follower() -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        {
            let mut w = storage.wl();
            let entries: Vec<Entry> = (1..=5)
                .map(|i| {
                    let mut e = Entry::default();
                    (e.index, e.term) = (i, 2);
                    e
                })
                .collect();
            w.append(&entries).unwrap();
            let mut hs = HardState::default();
            (hs.term, hs.commit) = (2, 3);
            w.set_hardstate(hs);
        }
        let config = Config {
            id: 2,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&config, storage, &logger).unwrap();
        raw.raft.become_follower(2, 1);
        raw
    }

    fn msg(kind: MessageType, index: u64, entries: &[(u64, u64)]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        (m.from, m.to, m.term, m.index, m.log_term) = (1, 2, 2, index, 2);
        m.entries = entries
            .iter()
            .map(|&(index, term)| {
                let mut e = Entry::default();
                (e.index, e.term) = (index, term);
                e
            })
            .collect::<Vec<_>>()
            .into();
        m
    }

    /// Snapshots raft-rs would stop the process on (a configuration that
    /// does not round-trip: joint, repeated or zero ids) are refused; a
    /// plain one that names this node is taken.
    #[test]
    fn snapshots_raft_rs_cannot_restore_are_refused() {
        use super::check_snapshot;
        use crate::state::StateMachine;
        use raft::eraftpb::Snapshot;
        let snap = |f: &dyn Fn(&mut ConfState)| {
            let mut s = Snapshot::default();
            (s.mut_metadata().index, s.mut_metadata().term) = (1, 1);
            let cs = s.mut_metadata().mut_conf_state();
            cs.voters = vec![1, 2, 3];
            f(cs);
            s
        };
        let sm = StateMachine::default();
        assert_eq!(check_snapshot(2, &sm, &snap(&|_| {})), Ok(()));
        for bad in [
            snap(&|cs| cs.voters = vec![1, 2, 2, 3]),
            snap(&|cs| cs.learners = vec![3]),
            snap(&|cs| cs.voters = vec![0, 2]),
            snap(&|cs| cs.voters_outgoing = vec![1, 2]),
            snap(&|cs| cs.learners_next = vec![4]),
            snap(&|cs| cs.auto_leave = true),
            snap(&|cs| cs.voters = vec![1, 3]),
            {
                let mut s = snap(&|_| {});
                s.mut_metadata().term = 0;
                s
            },
        ] {
            assert!(check_snapshot(2, &sm, &bad).is_err(), "{bad:?}");
        }
    }

    /// Each message refused is one raft-rs panics on when stepped (the
    /// control, under catch_unwind); each accepted one steps.
    #[test]
    fn messages_raft_rs_panics_on_are_refused() {
        let mut heartbeat = msg(MessageType::MsgHeartbeat, 0, &[]);
        heartbeat.commit = 100;
        let panicking = [
            heartbeat,
            // Entries not following index 3.
            msg(MessageType::MsgAppend, 3, &[(7, 2), (9, 2)]),
            {
                let mut m = msg(MessageType::MsgPropose, 0, &[]);
                m.term = 0;
                m
            },
            // Past the log, log_term 0: taken, then commits past it.
            {
                let mut m = msg(MessageType::MsgAppend, 1 << 40, &[]);
                (m.log_term, m.commit) = (0, 20);
                m
            },
            // A proposal with a term, which the follower would forward.
            msg(MessageType::MsgPropose, 0, &[(0, 0)]),
        ];
        for m in panicking {
            let mut raw = follower();
            assert!(refuse(&raw.raft, &m).is_some(), "not refused: {m:?}");
            let stepped =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.step(m.clone())));
            // The empty proposal panics only on a leader; the rest here.
            if !(m.get_msg_type() == MessageType::MsgPropose && m.entries.is_empty()) {
                assert!(stepped.is_err(), "raft-rs took {m:?}");
            }
        }
        let fine = [
            msg(MessageType::MsgAppend, 5, &[(6, 2), (7, 2)]),
            // Rewrites uncommitted entry 4: allowed.
            msg(MessageType::MsgAppend, 3, &[(4, 3)]),
        ];
        for m in fine {
            let mut raw = follower();
            assert_eq!(refuse(&raw.raft, &m), None, "{m:?}");
            raw.step(m).unwrap();
        }
    }
}
