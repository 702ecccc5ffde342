"""Every Prometheus metric cdc-cache exports, declared in one place.

Labels stay few and bounded: table, op, outcome, kind; a value taken from a message (a
table, a connector) goes through :mod:`cdc_cache.core.labels`.

Kept in one module on purpose: declarations only, so each metric is declared once and
the dashboard and alert tests find every name here.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Final

from cdc_cache_client.keys import DEFAULT_NAMESPACE
from prometheus_client import Counter, Gauge, Histogram, Info

NAMESPACE: Final = "cdc_cache"


def _installed_version() -> str:
    """The installed distribution's version; "unknown" when run from an uninstalled tree."""
    try:
        return metadata.version("cdc-cache")
    except metadata.PackageNotFoundError:
        return "unknown"


# Every process (worker, gateway, watchdog, inspector) says which build it runs, so a
# mixed fleet during a rollout shows on the dashboard and in alerts' queries, and under
# which namespace it works: the dashboard's namespace variable picks its processes by it.
BUILD_INFO = Info(
    "build",
    "The cdc-cache build this process runs: its version and Python's, and its namespace",
    namespace=NAMESPACE,
)


def announce_namespace(namespace: str) -> None:
    """Label this process's ``build_info`` with the namespace it works under."""
    BUILD_INFO.info(
        {
            "version": _installed_version(),
            "python": platform.python_version(),
            "namespace": namespace,
        }
    )


announce_namespace(DEFAULT_NAMESPACE)  # until the process chooses its own

RECORDS = Counter(
    "records",
    "Kafka records consumed, by kind (change, heartbeat, tombstone, schema_change, rejected)",
    ["kind"],
    namespace=NAMESPACE,
)
EVENTS = Counter(
    "events",
    "Change events by table, op and outcome (applied, stale, duplicate, no_op)",
    ["table", "op", "outcome"],
    namespace=NAMESPACE,
)
POISON = Counter(
    "poison_messages",
    "Messages that could not be processed, by kind and table",
    ["kind", "table"],
    namespace=NAMESPACE,
)
DLQ_ENTRIES = Counter(
    "dlq_entries",
    "Entries written durably to the dead-letter topic, by kind (the reason) and table",
    ["kind", "table"],
    namespace=NAMESPACE,
)
FAILED_CHANGE_KEYS = Counter(
    "failed_change_keys",
    "Keys of changes that could not be applied as planned, by table and outcome: deleted "
    "(version-gated, tombstone left), skipped (the key already holds that change or a newer "
    "one), unversioned (plain DEL: its version key holds another type), unreached (no image "
    "of the change renders the key: it may serve the old row until its TTL)",
    ["table", "outcome"],
    namespace=NAMESPACE,
)
DLQ_REPLAYS = Counter(
    "dlq_replays",
    "Replays of dead-letter entries, by outcome (applied, stale, duplicate, no_op, failed)",
    ["outcome"],
    namespace=NAMESPACE,
)
REDIS_OPS = Counter(
    "redis_ops",
    "Version-gated Redis operations by the kind they were sent as (set, delete, index, "
    "invalidate_prefix, notify, relay; a row expired before its batch is a delete) and outcome",
    ["kind", "outcome"],
    namespace=NAMESPACE,
)
ABSENT_INDEX_OPS = Counter(
    "absent_index_ops",
    "Member ops of index keys (zadd, sadd rules) that left their index absent until a snapshot "
    "of the table rebuilds it (the index was gone though the worker had left members in it, or "
    "the op dropped it), by the table they belong to: run cdc-cache snapshot --table <table>",
    ["table"],
    namespace=NAMESPACE,
)
LABEL_OVERFLOW = Counter(
    "label_overflow",
    "Label values from messages past the bound a label keeps (see cdc_cache.core.labels): "
    "counted under the value _other, by label (table, source)",
    ["label"],
    namespace=NAMESPACE,
)
CONSUMER_ERRORS = Counter(
    "consumer_errors",
    "Errors reported by the Kafka client (it retries them itself), by librdkafka error code",
    ["code"],
    namespace=NAMESPACE,
)
BROKER_UP = Gauge(
    "broker_up",
    "1 while the brokers answer this process, 0 from a reported outage (all brokers down, "
    "transport error) until the next successful fetch",
    namespace=NAMESPACE,
)
RETRIES = Counter(
    "retries",
    "Retries of transient failures, by what was retried (redis, kafka_dlq)",
    ["target"],
    namespace=NAMESPACE,
)
APPLY_SECONDS = Histogram(
    "apply_batch_seconds",
    "Time to apply one batch to Redis, retries included",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2, 2.5,
                    5, 10, 30, 60, 300)  # fmt: skip
COMMIT_TO_APPLIED = Histogram(
    "commit_to_applied_seconds",
    "Source commit time (source.ts_ms) to applied in Redis; MySQL/MariaDB commit times have "
    "one-second resolution, so there this overstates by up to a second",
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
EMITTED_TO_APPLIED = Histogram(
    "emitted_to_applied_seconds",
    "Debezium emitting the change (envelope ts_ms, millisecond resolution) to applied in Redis",
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
RECEIVED_TO_APPLIED = Histogram(
    "received_to_applied_seconds",
    "The worker's own share of the latency: its source taking a record from the Kafka "
    "consumer to Redis answering for the record's change (any outcome); records waiting "
    "in the consumer's prefetch queue are not in it",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5,
             0.75, 1, 2.5, 5, 10, 30),
)  # fmt: skip
CONNECTOR_LAG = Gauge(
    "connector_lag_seconds",
    "Now minus the source commit time of the newest event or heartbeat seen, per topic partition",
    ["topic", "partition"],
    namespace=NAMESPACE,
)
SOURCE_CLOCK_AHEAD = Gauge(
    "source_clock_ahead_seconds",
    "How far the newest source time seen lies ahead of the worker's clock, per topic "
    "partition: connector lag reads at least that much too low",
    ["topic", "partition"],
    namespace=NAMESPACE,
)
CONSUMER_LAG = Gauge(
    "consumer_lag_messages",
    "Messages below the partition's high watermark (as seen while fetching) not yet applied",
    ["topic", "partition"],
    namespace=NAMESPACE,
)
MODE = Gauge(
    "mode",
    "1 for the effective cache mode (cdc or ttl), 0 for the other",
    ["mode"],
    namespace=NAMESPACE,
)
MODE_FLAG = Gauge(
    "mode_flag",
    "1 for the operator flag's value (auto, cdc or ttl)",
    ["flag"],
    namespace=NAMESPACE,
)
MODE_FLAG_LOST = Gauge(
    "mode_flag_lost",
    "1 while a forced operator flag is kept after its key vanished without an operator "
    "clearing it (Redis restarted empty, the key evicted or deleted)",
    namespace=NAMESPACE,
)
MODE_FORCED_OVERRIDE = Gauge(
    "mode_forced_override",
    "1 while a forced cdc mode overrides the worker's evidence that the cache may be "
    "wrong: active holds (over=holds) or a lag that calls for ttl (over=lag)",
    ["over"],
    namespace=NAMESPACE,
)
MODE_SWITCHES = Counter(
    "mode_switches",
    "Switches of the effective mode, by target mode and reason",
    ["to", "reason"],
    namespace=NAMESPACE,
)
SOURCE_TOPIC_UNKNOWN = Gauge(
    "source_topic_unknown",
    "1 while the brokers answer that a topic read is unknown (judged gone, a discontinuity, "
    "only once that lasted)",
    ["topic"],
    namespace=NAMESPACE,
)
FLOW_STUCK = Gauge(
    "flow_stuck",
    "1 while the dataflow is judged stuck (a source partition not polled, or messages left "
    "unapplied, for flow_stall_s): the mode heartbeat stops so that the watchdog falls back",
    namespace=NAMESPACE,
)
MODE_HOLDS = Gauge(
    "mode_holds",
    "Active holds by cause: conditions under which the cache cannot be known right, each "
    "forcing ttl mode while it lasts (lineage, redis_oom, redis_replication, "
    "source_discontinuity, worker_down; table_failing counts tables falling back alone)",
    ["cause"],
    namespace=NAMESPACE,
)
REDIS_OOM_REFUSALS = Counter(
    "redis_oom_refusals",
    "Apply-script calls Redis refused for memory (OOM); their ops were applied again as "
    "invalidations, which Redis takes even then",
    namespace=NAMESPACE,
)
REDIS_EVICTIONS = Counter(
    "redis_evictions",
    "Keys Redis evicted (its INFO evicted_keys), as seen by this worker, per primary",
    ["node"],
    namespace=NAMESPACE,
)
REDIS_MEMORY_HEADROOM = Gauge(
    "redis_memory_headroom_bytes",
    "maxmemory minus the memory Redis counts against it, per primary (absent without "
    "maxmemory); at 0 Redis evicts, or refuses writes under noeviction",
    ["node"],
    namespace=NAMESPACE,
)
REDIS_MAXMEMORY = Gauge(
    "redis_maxmemory_bytes",
    "The maxmemory setting of each primary (0: no limit)",
    ["node"],
    namespace=NAMESPACE,
)
REDIS_EVICTION_POLICY = Gauge(
    "redis_eviction_policy",
    "1 for each primary's maxmemory-policy",
    ["node", "policy"],
    namespace=NAMESPACE,
)
INVALIDATE_ONLY = Gauge(
    "invalidate_only",
    "1 while the worker writes no values, only invalidations: Redis runs an eviction policy "
    "that may evict version metadata (opted into with eviction_fallback: invalidate_only, or "
    "the policy changed while running)",
    namespace=NAMESPACE,
)
VERSIONS_SWEPT = Counter(
    "versions_swept",
    "Version records (tombstones included, TRUNCATE records not) forgotten after their "
    "horizon by the sweeper",
    namespace=NAMESPACE,
)
VERSIONS_KEPT = Gauge(
    "versions",
    "Version records (tombstones included) in Redis after the last sweep; TRUNCATE records "
    "are counted apart (truncate_records)",
    namespace=NAMESPACE,
)
TRUNCATE_RECORDS = Gauge(
    "truncate_records",
    "TRUNCATE records (truncated:<table>, one per version bucket and truncated table) in the "
    "version buckets after the last sweep; each is forgotten past its horizon",
    namespace=NAMESPACE,
)
TABLE_FALLBACK = Gauge(
    "table_fallback",
    "1 while the table falls back to ttl mode on its own (cause table_failing:<table>: its "
    "changes keep failing, its columns no longer fit the rules, or its deletes are hidden), "
    "else 0",
    ["table"],
    namespace=NAMESPACE,
)
DELETES_HIDDEN = Gauge(
    "deletes_hidden",
    "1 while the table's flattened records carry no __deleted field (ExtractNewRecordState "
    "not in rewrite mode: its deletes reach the worker as tombstones or not at all), so it "
    "falls back to ttl mode on its own; else 0",
    ["table"],
    namespace=NAMESPACE,
)
SCHEMA_CHANGES = Counter(
    "schema_changes",
    "Changes of a covered table's columns, seen in a DDL record or in the rows themselves",
    ["table"],
    namespace=NAMESPACE,
)
RULES_COLUMN_PROBLEMS = Gauge(
    "rules_column_problems",
    "Columns the rules name that the table no longer has, by table and whether that breaks "
    "its changes (breaks=true: keys, fields, notifications; false: watch, sensitive, "
    "columns, types, render); the worker log names the rules file and line of each",
    ["table", "breaks"],
    namespace=NAMESPACE,
)
LINEAGE_SWITCHES = Counter(
    "lineage_switches",
    "Source log lineage switches this process found first and registered (summed over the "
    "processes: the switches); changes of the new lineage sort after the old one",
    ["source"],
    namespace=NAMESPACE,
)
LINEAGE_VERDICTS = Counter(
    "lineage_verdicts",
    "Changes not simply in log order, by verdict: resent (a connector re-sending), late (of "
    "an earlier lineage), new (a lineage starts), unknown (cannot tell: held), resnapshot "
    "(a new snapshot of the same log)",
    ["source", "verdict"],
    namespace=NAMESPACE,
)
LINEAGE_HELD = Gauge(
    "lineage_held_partitions",
    "Partitions of this process whose positions went back with no way to tell a new log "
    "from a re-read one (each holds the cache in ttl mode until they pass the newest again)",
    ["source"],
    namespace=NAMESPACE,
)
LINEAGE_EPOCH = Gauge(
    "lineage_epoch",
    "The newest source lineage epoch this process reads, per source",
    ["source"],
    namespace=NAMESPACE,
)
SOURCE_DISCONTINUITY = Gauge(
    "source_discontinuity",
    "1 while a topic partition's stored offset no longer means what it meant (a recreated "
    "topic, records removed before they were read) and the cache is held in ttl mode until "
    "an operator decides (cdc-cache continuity)",
    ["topic", "partition"],
    namespace=NAMESPACE,
)
SOURCE_DISCONTINUITIES = Counter(
    "source_discontinuities",
    "Source discontinuities found, by kind (topic_recreated, log_truncated, below_log_start)",
    ["kind"],
    namespace=NAMESPACE,
)
TTL_SHORTENED = Counter(
    "ttl_shortened_keys",
    "Existing cache keys given the short fallback TTL on entering ttl mode",
    namespace=NAMESPACE,
)
REDIS_REPLICAS_ONLINE = Gauge(
    "redis_replicas_online",
    "Replicas streaming from each Redis primary (INFO replication), read once a second",
    ["primary"],
    namespace=NAMESPACE,
)
REDIS_REPLICA_LAG_BYTES = Gauge(
    "redis_replica_lag_bytes",
    "Bytes of a primary's replication stream its most lagging online replica has not "
    "acknowledged (0 when no replica is online: see redis_replicas_online)",
    ["primary"],
    namespace=NAMESPACE,
)
REDIS_REPLICA_ACK_AGE = Gauge(
    "redis_replica_ack_age_seconds",
    "Seconds since the least recent acknowledgement among a primary's online replicas",
    ["primary"],
    namespace=NAMESPACE,
)
REDIS_FAILOVERS = Counter(
    "redis_failovers",
    "Redis primaries replaced by another server, by outcome (complete: the new primary "
    "holds every write its replicas confirmed; incomplete: writes may be lost, ttl mode)",
    ["outcome"],
    namespace=NAMESPACE,
)
REPLICA_WAITS = Counter(
    "replica_waits",
    "Waits for the required replicas after a batch, per primary, by outcome "
    "(acknowledged, timed_out: waited again, with a redis_replication hold)",
    ["outcome"],
    namespace=NAMESPACE,
)
REPLICA_WAIT_SECONDS = Histogram(
    "replica_wait_seconds",
    "Time a batch waited, after its writes, until the required replicas acknowledged them",
    namespace=NAMESPACE,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# --- the watchdog (cdc-cache watchdog, and inside cdc-cache gateway) ---
WATCHDOG_WORKER_UP = Gauge(
    "watchdog_worker_up",
    "1 while the worker's heartbeat (cdc:mode rewritten by its mode leader) moves, 0 once it "
    "stood still longer than the bound (lag SLO + mode window)",
    namespace=NAMESPACE,
)
WATCHDOG_HEARTBEAT_STILL = Gauge(
    "watchdog_heartbeat_still_seconds",
    "How long the worker's heartbeat has not moved, as this watchdog saw it",
    namespace=NAMESPACE,
)
WATCHDOG_LEADER = Gauge(
    "watchdog_leader",
    "1 in the watchdog instance holding the lock: the one that acts when the worker is down",
    namespace=NAMESPACE,
)
WATCHDOG_TAKEOVERS = Counter(
    "watchdog_takeovers",
    "Times a watchdog found no worker alive and took the mode decision over (ttl, worker_down)",
    namespace=NAMESPACE,
)

# --- the notification gateway (cdc-cache gateway) ---
GATEWAY_CONNECTIONS = Gauge(
    "gateway_connections",
    "WebSocket clients connected to the gateway",
    namespace=NAMESPACE,
)
GATEWAY_MESSAGES_OUT = Counter(
    "gateway_messages_out",
    "Notifications queued to clients (one per client and message)",
    namespace=NAMESPACE,
)
GATEWAY_DROPS = Counter(
    "gateway_drops",
    "Clients disconnected by the gateway, by reason (slow: its queue was full)",
    ["reason"],
    namespace=NAMESPACE,
)
GATEWAY_AUTH_FAILURES = Counter(
    "gateway_auth_failures",
    "Refused tokens and subscriptions, by reason (invalid_token, expired, forbidden)",
    ["reason"],
    namespace=NAMESPACE,
)
GATEWAY_REFUSED = Counter(
    "gateway_refused_requests",
    "Client requests the gateway refused, by reason (rate_limited, too_many_patterns)",
    ["reason"],
    namespace=NAMESPACE,
)
GATEWAY_DELIVERY = Histogram(
    "gateway_commit_to_fanout_seconds",
    "Source commit time to the gateway reading the notification and queueing it to clients",
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)

# --- the consistency inspector (cdc-cache inspect) ---
INSPECT_CHECKS = Counter(
    "inspect_checks",
    "Sampled changes judged settle_s after the inspector read them, by table and outcome "
    "(consistent, stale, missing, unexpected)",
    ["table", "outcome"],
    namespace=NAMESPACE,
)
INSPECT_SKIPPED = Counter(
    "inspect_skipped",
    "Changes not sampled and samples given up without a judgement, by reason (rate, "
    "backlog, busy_row, undecodable, unrenderable)",
    ["reason"],
    namespace=NAMESPACE,
)
INSPECT_NINES = Gauge(
    "inspect_consistency_nines",
    "Consistency of the checks of the window in nines, -log10(inconsistent / checks): +Inf "
    "without any inconsistency, NaN below inspect_min_checks checks",
    ["window"],
    namespace=NAMESPACE,
)
INSPECT_WINDOW_CHECKS = Gauge(
    "inspect_window_checks",
    "Checks made in the window",
    ["window"],
    namespace=NAMESPACE,
)
INSPECT_OBJECTIVE = Gauge(
    "inspect_objective_nines",
    "The consistency objective in nines (inspect_objective_nines): the alert fires below it",
    namespace=NAMESPACE,
)
INSPECT_TIME_TO_CONSISTENCY = Histogram(
    "inspect_time_to_consistency_seconds",
    "Source commit time of a sampled change until its keys were seen right: by probes of the "
    "cache (50 ms after it was read, doubling, until settle_s), else by re-checks of a wrong "
    "key; MySQL/MariaDB commit times have one-second resolution",
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
INSPECT_UNRESOLVED = Counter(
    "inspect_unresolved",
    "Samples still inconsistent when their re-checks ran out (inspect_recheck_limit_s), by outcome",
    ["outcome"],
    namespace=NAMESPACE,
)
INSPECT_PENDING = Gauge(
    "inspect_pending_samples",
    "Samples waiting for their check or re-check",
    namespace=NAMESPACE,
)
INSPECT_DB_QUERIES = Counter(
    "inspect_db_queries",
    "Queries the inspector sent to the database (bounded by inspect_max_db_queries_per_s)",
    namespace=NAMESPACE,
)
FANOUT_KEYS = Histogram(
    "fanout_keys",
    "Members of a cache tag when a change invalidated it (dependent keys and tagged fills)",
    namespace=NAMESPACE,
    buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
)
DEPENDENCY_DELETES = Counter(
    "dependency_deletes",
    "Keys deleted because a row they depend on changed, by cause (invalidation: a tag's "
    "fan-out; catch_up: a link seen after its parent's change)",
    ["cause"],
    namespace=NAMESPACE,
)
FANOUT_PENDING = Gauge(
    "fanout_pending_keys",
    "Members of the tag invalidations in progress (added when one starts, taken off when it ends)",
    namespace=NAMESPACE,
)
FANOUT_FALLBACKS = Counter(
    "fanout_fallbacks",
    "Tag invalidations above fanout_limit, answered by shortening the TTLs under the "
    "dependent keys' prefixes instead of deleting each key",
    namespace=NAMESPACE,
)
