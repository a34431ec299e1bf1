//! One member's connection: what it owns, from the stored state; its partitions' events in
//! position order, at most `inflight_max` unacknowledged per partition; its lease renewed;
//! revoked partitions handed over once acknowledged; everything given back when it ends.

use super::{Groups, Options};
use crate::protocol::{GroupName, MemberName, Position, RecordedEvent, Timestamp, partition_of};
use crate::store::groups::GroupState;
use crate::store::{Direction, Filter, LogQuery, Store};
use crate::subscriptions::{Batch, Hub, sse};
use axum::body::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// How often a session reads its group's state (ownership, acknowledgements).
pub const REFRESH: Duration = Duration::from_millis(100);

/// Who is connected.
#[derive(Debug, Clone)]
pub struct Member {
    /// The group.
    pub group: GroupName,
    /// The member's name.
    pub member: MemberName,
    /// This connection's id, held in the member's lease.
    pub session: String,
}

/// One partition this member owns.
struct Part {
    /// Every event of it up to here was sent (or did not match).
    scanned: Position,
    /// Sent and not acknowledged yet, with when they were sent.
    inflight: VecDeque<(Position, Instant)>,
    /// The coordinator gives it to another member: send nothing more of it.
    revoked: bool,
}

/// Why a session ended.
enum Ended {
    /// The client left, or the server shuts down.
    Stopped,
    /// Its lease is gone or the group was deleted.
    Lost,
    /// It stopped acknowledging for the member timeout.
    Stalled,
}

struct Session {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    groups: Arc<Groups>,
    options: Options,
    member: Member,
    filter: Filter,
    partitions: u32,
    parts: BTreeMap<u32, Part>,
    /// The partitions the member was last told it owns.
    told: Option<Vec<u32>>,
    parked: HashSet<Position>,
    parked_count: u64,
    last_progress: Instant,
    renewed_at: Instant,
    out: mpsc::Sender<Bytes>,
    pending: Vec<u8>,
    last_sent_at: Instant,
    shutdown: watch::Receiver<bool>,
    keep_alive: Duration,
}

/// Serves `member`, which has joined `state`'s group, into `out` until it leaves, stalls or
/// loses its lease; then gives its name and partitions back.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    groups: Arc<Groups>,
    options: Options,
    keep_alive: Duration,
    member: Member,
    state: GroupState,
    out: mpsc::Sender<Bytes>,
    shutdown: watch::Receiver<bool>,
) {
    let settings = &state.settings;
    let filter = Filter {
        category: settings.category.clone(),
        types: settings.types.clone(),
        ..Filter::default()
    };
    let now = Instant::now();
    let mut session = Session {
        store: store.clone(),
        hub,
        groups,
        options,
        filter,
        partitions: settings.partitions,
        parts: BTreeMap::new(),
        told: None,
        parked: HashSet::new(),
        parked_count: 0,
        last_progress: now,
        renewed_at: now,
        out,
        pending: sse::RETRY.to_vec(),
        last_sent_at: now,
        shutdown,
        keep_alive,
        member: member.clone(),
    };
    let ended = session.run(state).await;
    let reason = match ended {
        Ended::Stopped => "left",
        Ended::Lost => "lost its lease",
        Ended::Stalled => "stopped acknowledging",
    };
    info!(group = %member.group, member = %member.member, reason, "group member ended");
    // Its partitions go to the others at once.
    let (name, session_id, mut moved) = (member.member.clone(), member.session.clone(), false);
    let mut leave = |state: &mut GroupState| {
        state.leave(&name, &session_id);
        moved = state.rebalance(Timestamp::now());
    };
    if let Err(err) = store.change_group(&member.group, &mut leave).await {
        warn!(cause = %crate::error_chain(&err), "a leaving group member's partitions wait for its lease to lapse");
    }
    session.groups.rebalanced(&member.group, moved);
    session.groups.changed(&member.group);
}

impl Session {
    async fn run(&mut self, state: GroupState) -> Ended {
        let mut changes = self.groups.subscribe(&self.member.group);
        if let Err(ended) = self.reconcile(state).await {
            return ended;
        }
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Subscribe before reading storage, as subscriptions do: what commits meanwhile is
            // in what we read or in what the broadcast gives next.
            let mut live = self.hub.subscribe();
            if let Err(ended) = self.catch_up().await {
                return ended;
            }
            let woke = tokio::select! {
                batch = live.recv() => Some(batch),
                _ = refresh.tick() => None,
                _ = changes.changed() => None,
                _ = tokio::time::sleep_until(self.last_sent_at + self.keep_alive) => {
                    self.pending.extend_from_slice(sse::KEEPALIVE);
                    None
                }
                _ = self.shutdown.wait_for(|stopping| *stopping) => return Ended::Stopped,
                () = self.out.closed() => return Ended::Stopped,
            };
            match woke {
                Some(Ok(batch)) => {
                    if let Err(ended) = self.live(batch, &mut live).await {
                        return ended;
                    }
                    // The state is read at the refresh, or when something changed here (an
                    // acknowledgement): not once per commit.
                    continue;
                }
                // Behind the broadcast: storage has it, at the next turn.
                Some(Err(RecvError::Lagged(_))) => continue,
                Some(Err(RecvError::Closed)) => return Ended::Stopped,
                None => {}
            }
            match self.store.group(&self.member.group).await {
                Ok(Some(state)) => {
                    if let Err(ended) = self.reconcile(state).await {
                        return ended;
                    }
                }
                Ok(None) => return Ended::Lost,
                Err(err) => {
                    warn!(cause = %crate::error_chain(&err), "group member cannot read its group");
                    // Fenced: past half the timeout without a renewal, another instance may
                    // soon give these partitions away. Stop sending before it can.
                    if self.renewed_at.elapsed() > self.options.member_timeout / 2 {
                        return Ended::Lost;
                    }
                }
            }
            if let Err(ended) = self.flush().await {
                return ended;
            }
        }
    }

    /// Takes in the stored state: the lease, what this member owns, what was acknowledged.
    async fn reconcile(&mut self, state: GroupState) -> Result<(), Ended> {
        let me = &self.member.member.clone();
        let Some(lease) = state.members.get(me) else { return Err(Ended::Lost) };
        if lease.session != self.member.session {
            return Err(Ended::Lost);
        }
        if self.renewed_at.elapsed() >= self.options.member_timeout / 4 {
            self.renew().await?;
        }
        // Fenced: past half the timeout without a renewal, another instance may soon see the
        // lease lapse and give these partitions away. Stop sending before it can.
        if self.renewed_at.elapsed() > self.options.member_timeout / 2 {
            return Err(Ended::Lost);
        }
        let mut releases = Vec::new();
        let mut redeliveries = Vec::new();
        for (k, row) in (0u32..).zip(&state.partitions) {
            if row.owner.as_ref() != Some(me) {
                self.parts.remove(&k);
                continue;
            }
            let part = self.parts.entry(k).or_insert_with(|| Part {
                scanned: row.position,
                inflight: VecDeque::new(),
                revoked: false,
            });
            let before = part.inflight.len();
            part.inflight.retain(|(position, _)| *position > row.position);
            if part.inflight.len() < before {
                self.last_progress = Instant::now();
            }
            if let Some(from) = row.redeliver_from {
                // Sent again from `from` on, in order: what followed it goes again too.
                part.scanned = part.scanned.min(Position(from.0.saturating_sub(1)));
                part.inflight.retain(|(position, _)| *position < from);
                redeliveries.push((k, from));
            }
            part.revoked = row.wanted.as_ref() != Some(me);
            if part.revoked && part.inflight.is_empty() {
                releases.push(k);
            }
        }
        if !releases.is_empty() || !redeliveries.is_empty() {
            self.hand_over(&releases, &redeliveries).await?;
        }
        let stalled =
            self.parts.values().filter_map(|p| p.inflight.front()).map(|(_, at)| *at).min();
        if stalled.is_some_and(|sent| {
            let waiting_since = sent.max(self.last_progress);
            waiting_since.elapsed() > self.options.member_timeout
        }) {
            return Err(Ended::Stalled);
        }
        self.tell_assignment(state.assigned_to(me));
        if state.parked != self.parked_count {
            self.parked_count = state.parked;
            self.read_parked().await;
        }
        self.replay().await;
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), Ended> {
        let (member, session, ttl) =
            (&self.member.member, &self.member.session, self.options.member_timeout);
        let mut renewed = false;
        let mut renew = |state: &mut GroupState| {
            renewed = state.renew(member, session, Timestamp::now(), ttl);
        };
        match self.store.change_group(&self.member.group, &mut renew).await {
            Ok(true) if renewed => {
                self.renewed_at = Instant::now();
                Ok(())
            }
            Ok(_) => Err(Ended::Lost),
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "group member cannot renew its lease");
                Ok(())
            }
        }
    }

    /// Releases revoked partitions whose events are all acknowledged, and clears the
    /// redeliveries taken in.
    async fn hand_over(
        &mut self,
        releases: &[u32],
        redeliveries: &[(u32, Position)],
    ) -> Result<(), Ended> {
        let (member, mut moved) = (self.member.member.clone(), false);
        let mut change = |state: &mut GroupState| {
            for &k in releases {
                state.release(&member, k);
            }
            for &(k, from) in redeliveries {
                if let Some(row) = state.partitions.get_mut(k as usize) {
                    if row.redeliver_from == Some(from) {
                        row.redeliver_from = None;
                    }
                }
            }
            moved = state.rebalance(Timestamp::now());
        };
        match self.store.change_group(&self.member.group, &mut change).await {
            Ok(true) => {
                for k in releases {
                    self.parts.remove(k);
                }
                self.groups.rebalanced(&self.member.group, moved);
                self.groups.changed(&self.member.group);
                Ok(())
            }
            Ok(false) => Err(Ended::Lost),
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "group member cannot hand partitions over");
                Ok(())
            }
        }
    }

    fn tell_assignment(&mut self, assigned: Vec<u32>) {
        if self.told.as_ref() != Some(&assigned) {
            sse::named(&mut self.pending, "assigned", &json!({ "partitions": assigned }));
            self.told = Some(assigned);
        }
    }

    async fn read_parked(&mut self) {
        match self.store.parked(&self.member.group).await {
            Ok(parked) => self.parked = parked.into_iter().map(|p| p.position).collect(),
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "group member cannot read parked events")
            }
        }
    }

    /// Sends the parked events of its partitions marked for replay, then forgets them.
    async fn replay(&mut self) {
        let mine: Vec<u32> =
            self.parts.iter().filter(|(_, p)| !p.revoked).map(|(k, _)| *k).collect();
        if mine.is_empty() || self.parked.is_empty() {
            return;
        }
        let positions = match self.store.take_replays(&self.member.group, &mine).await {
            Ok(positions) => positions,
            Err(err) => {
                warn!(cause = %crate::error_chain(&err), "group member cannot take replays");
                return;
            }
        };
        for position in positions {
            self.parked.remove(&position);
            if let Ok(Some(event)) = super::event_at(&*self.store, position).await {
                let k = partition_of(event.stream.as_str(), self.partitions);
                self.encode(&event, k);
            }
        }
    }

    /// Whether partition `k` may be sent another event.
    fn has_room(&self, part: &Part) -> bool {
        !part.revoked && part.inflight.len() < self.options.inflight_max
    }

    /// Where the next read starts: the least scanned position of the partitions with room.
    fn cursor(&self) -> Option<Position> {
        self.parts.values().filter(|p| self.has_room(p)).map(|p| p.scanned).min()
    }

    /// Reads storage from the cursor while it is behind what the tailer has read.
    async fn catch_up(&mut self) -> Result<(), Ended> {
        loop {
            let Some(cursor) = self.cursor() else { return self.flush().await };
            if cursor >= *self.hub.tailed().borrow() {
                return self.flush().await;
            }
            let query = LogQuery {
                filter: self.filter.clone(),
                from: Some(cursor.after(1)),
                direction: Direction::Forward,
                limit: 1000,
                bytes_max: 4 << 20,
            };
            let page = match self.store.read_log(query).await {
                Ok(page) => page,
                Err(err) => {
                    warn!(cause = %crate::error_chain(&err), "group member cannot read storage");
                    return self.flush().await;
                }
            };
            let through = page.next.map_or(page.head, |next| Position(next.0 - 1));
            self.deliver(cursor, page.events.iter(), through);
            self.flush().await?;
        }
    }

    /// Delivers a broadcast batch if it follows on from the cursor; otherwise storage will.
    async fn live(
        &mut self,
        batch: Batch,
        live: &mut tokio::sync::broadcast::Receiver<Batch>,
    ) -> Result<(), Ended> {
        let mut batch = batch;
        loop {
            let Some(cursor) = self.cursor() else { return Ok(()) };
            if batch.after > cursor {
                return Ok(()); // a stretch we did not get: read storage
            }
            let events = batch.events.iter().map(|e| &e.event).filter(|e| self.filter.matches(e));
            let events: Vec<&RecordedEvent> = events.collect();
            self.deliver(cursor, events.into_iter(), batch.through);
            self.flush().await?;
            match live.try_recv() {
                Ok(next) => batch = next,
                Err(_) => return Ok(()),
            }
        }
    }

    /// Sends the events after `cursor` of partitions with room, up to `through`.
    fn deliver<'e>(
        &mut self,
        cursor: Position,
        events: impl Iterator<Item = &'e RecordedEvent>,
        through: Position,
    ) {
        // Only partitions with room at `cursor` or beyond were read for: they advance.
        let reading: Vec<u32> = self
            .parts
            .iter()
            .filter(|(_, p)| self.has_room(p) && p.scanned >= cursor)
            .map(|(k, _)| *k)
            .collect();
        let mut full: HashSet<u32> = HashSet::new();
        for event in events {
            if event.position <= cursor {
                continue;
            }
            let k = partition_of(event.stream.as_str(), self.partitions);
            if !reading.contains(&k) || full.contains(&k) {
                continue;
            }
            let max = self.options.inflight_max;
            let part = self.parts.get_mut(&k).expect("reading only owned partitions");
            if event.position <= part.scanned {
                continue;
            }
            if part.inflight.len() >= max {
                part.scanned = Position(event.position.0 - 1);
                full.insert(k);
                continue;
            }
            part.scanned = event.position;
            if self.parked.contains(&event.position) {
                continue;
            }
            part.inflight.push_back((event.position, Instant::now()));
            match self.hub.erased_copy(event) {
                Some(erased) => self.encode(&erased, k),
                None => self.encode(event, k),
            }
        }
        for k in reading {
            if !full.contains(&k) {
                let part = self.parts.get_mut(&k).expect("reading only owned partitions");
                part.scanned = part.scanned.max(through);
            }
        }
    }

    fn encode(&mut self, event: &RecordedEvent, partition: u32) {
        let mut value = serde_json::to_value(event).expect("a recorded event serializes");
        value["partition"] = json!(partition);
        let mut line = Vec::new();
        sse::event_json(&mut line, event.position, &value);
        self.pending.extend_from_slice(&line);
    }

    async fn flush(&mut self) -> Result<(), Ended> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.pending));
        tokio::select! {
            sent = self.out.send(chunk) => sent.map_err(|_| Ended::Stopped)?,
            _ = self.shutdown.wait_for(|stopping| *stopping) => return Err(Ended::Stopped),
        }
        self.last_sent_at = Instant::now();
        Ok(())
    }
}
