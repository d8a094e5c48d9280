-- The three shipped fraud rules (irsf_high_risk_destination, sms_sim_farm, simbox_behaviour) as
-- per-event trailing windows in DuckDB: for every triggering record, the window ending at that
-- record's time, over the records before it in file order (the input is in event-time order).
-- Output: the table `pairs(rule, subscriber)`.
--
-- A template: duck_rules.py fills the dollar-brace placeholders from params.toml and lists/ (thresholds per segment,
-- prefix lists as CASE expressions, longest prefix first) and runs the statements in order.
--
-- Window edges follow cdrguard's state (src/state/cells.rs, distinct.rs), not the nominal length:
--  * time is bucketed in 20 s ticks aligned to the epoch; a window (E - w, E] takes every record
--    whose tick is >= tick(E - w) = tick(E) - w/20 (a record up to 20 s older may count);
--  * distinct counts (numbers, cells) always use those 20 s ticks;
--  * counts and sums over 24 h use 16-minute buckets: cells older than 8 h are rolled up to
--    16 min at the hourly compaction, so at the 24 h edge a record counts when its epoch-aligned
--    960 s bucket is >= bucket(E) - 90 (a record up to 16 min older than 24 h may count);
--  * counts and sums over 1 h use the 20 s ticks (see README: the 2-minute roll-up at the 1 h
--    edge depends on each subscriber's compaction clock and is not reproduced).
-- "Before it in file order": within a tick, later records are not yet applied when a record is
-- evaluated, so frames are ROWS frames ending at the current row, with a per-row start.

SET threads = ${threads};

-- Load: only the fields the rules read. Insertion order is file order (rowid).
CREATE TABLE raw AS
SELECT * FROM read_json('${usage}', format = 'newline_delimited', columns = {
    record_type: 'VARCHAR', direction: 'VARCHAR', event_start: 'TIMESTAMPTZ', duration_s: 'BIGINT',
    served: 'STRUCT(msisdn VARCHAR, account_id VARCHAR)', other_party: 'STRUCT(number VARCHAR)',
    location: 'STRUCT(cell_id BIGINT)', forwarding: 'STRUCT(forwarded_to_number VARCHAR)'});

-- Segment changes: the only account facts these rules read (a segment picks the parameters).
CREATE TABLE seg_ev AS
SELECT account_id AS acct, floor(epoch(occurred_at))::BIGINT AS t, segment
FROM read_json('${events}', format = 'newline_delimited', columns = {
    event_type: 'VARCHAR', occurred_at: 'TIMESTAMPTZ', account_id: 'VARCHAR', segment: 'VARCHAR'})
WHERE event_type = 'segment_changed';

-- Thresholds per segment, defaults with [segments.<s>.<rule>] overrides applied.
CREATE TABLE params AS SELECT * FROM (VALUES ${params_rows}) p(
    segment, irsf_min_calls, irsf_min_minutes, sms_min_per_hour, sms_min_per_day,
    sms_min_distinct_share, sb_min_mo_calls, sb_min_distinct_called, sb_min_mo_mt_ratio, sb_max_cells);

-- The record as the classifier sees it (src/classify, src/record/usage.rs): a record with a forward
-- target (or direction forwarded) is of direction `forwarded` and its destination is the forward
-- target; data records have no direction.
CREATE VIEW r AS
SELECT
    seq, sub, t, t // 20 AS tick, t // 960 AS b16, typ, duration_s, cell,
    CASE WHEN fwd THEN 'forwarded' WHEN typ = 'data' THEN NULL ELSE direction END AS dir,
    CASE WHEN fwd THEN coalesce(fwd_to, other) ELSE other END AS dest,
    acct
FROM (
    SELECT
        rowid AS seq, served.msisdn AS sub, nullif(served.account_id, '') AS acct,
        floor(epoch(event_start))::BIGINT AS t, record_type AS typ, direction,
        coalesce(duration_s, 0) AS duration_s, location.cell_id AS cell,
        other_party.number AS other, forwarding.forwarded_to_number AS fwd_to,
        (record_type <> 'data' AND direction = 'forwarded')
            OR forwarding.forwarded_to_number IS NOT NULL AS fwd
    FROM raw);

-- ---- irsf_high_risk_destination: voice.mo.high_risk, count and minutes within 1 h ----------------
CREATE TABLE irsf_rows AS
SELECT seq, sub, acct, t, tick, duration_s FROM r
WHERE typ = 'voice' AND dir = 'mo' AND ${high_risk_dest};

CREATE TABLE irsf_eval AS
SELECT seq, sub, acct, t,
    -- rows of this subscriber up to this one, minus those in ticks before tick(E) - 180
    row_number() OVER (PARTITION BY sub ORDER BY seq)
      - count(*) OVER (PARTITION BY sub ORDER BY tick RANGE BETWEEN UNBOUNDED PRECEDING AND 181 PRECEDING)
      AS calls,
    sum(duration_s) OVER (PARTITION BY sub ORDER BY seq ROWS UNBOUNDED PRECEDING)
      - coalesce(sum(duration_s) OVER (PARTITION BY sub ORDER BY tick
                 RANGE BETWEEN UNBOUNDED PRECEDING AND 181 PRECEDING), 0)
      AS secs
FROM irsf_rows;

-- ---- sms_sim_farm: sms.mo, >= per hour in 1 h or >= per day in 24 h, distinct share -------------
CREATE TABLE sms_rows AS
SELECT seq, sub, acct, t, tick, b16, dest FROM r WHERE typ = 'sms' AND dir = 'mo';

CREATE TABLE sms_counts AS
SELECT seq, sub,
    row_number() OVER (PARTITION BY sub ORDER BY seq) AS rn,
    rn - count(*) OVER (PARTITION BY sub ORDER BY tick RANGE BETWEEN UNBOUNDED PRECEDING AND 181 PRECEDING) AS hour,
    rn - count(*) OVER (PARTITION BY sub ORDER BY b16 RANGE BETWEEN UNBOUNDED PRECEDING AND 91 PRECEDING) AS day
FROM sms_rows;

-- Only subscribers that reach a count threshold somewhere need distinct counts.
CREATE TABLE sms_eval AS
WITH cand AS (
    SELECT DISTINCT sub FROM sms_counts
    WHERE hour >= (SELECT min(sms_min_per_hour) FROM params)
       OR day >= (SELECT min(sms_min_per_day) FROM params)),
rows AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.sub ORDER BY s.seq) AS rn,
        count(*) OVER (PARTITION BY s.sub ORDER BY tick RANGE BETWEEN UNBOUNDED PRECEDING AND 181 PRECEDING) AS old_1h,
        count(*) OVER (PARTITION BY s.sub ORDER BY tick RANGE BETWEEN UNBOUNDED PRECEDING AND 4321 PRECEDING) AS old_24h
    FROM sms_rows s SEMI JOIN cand USING (sub))
SELECT rows.seq, rows.sub, rows.acct, rows.t, c.hour, c.day,
    count(DISTINCT dest) OVER (PARTITION BY rows.sub ORDER BY rows.seq
        ROWS BETWEEN rows.rn - 1 - old_1h PRECEDING AND CURRENT ROW) AS distinct_1h,
    count(DISTINCT dest) OVER (PARTITION BY rows.sub ORDER BY rows.seq
        ROWS BETWEEN rows.rn - 1 - old_24h PRECEDING AND CURRENT ROW) AS distinct_24h
FROM rows JOIN sms_counts c USING (seq);

-- ---- simbox_behaviour: voice.mo, all within 24 h ----------------------------------------------
CREATE TABLE sb_cand AS
SELECT DISTINCT sub FROM (
    SELECT sub, row_number() OVER (PARTITION BY sub ORDER BY seq)
        - count(*) OVER (PARTITION BY sub ORDER BY b16 RANGE BETWEEN UNBOUNDED PRECEDING AND 91 PRECEDING) AS mo
    FROM r WHERE typ = 'voice' AND dir = 'mo')
WHERE mo >= (SELECT min(sb_min_mo_calls) FROM params);

-- Every record of a candidate: MT calls, data and MO SMS, and cells count against it.
CREATE TABLE sb_eval AS
WITH rows AS (
    SELECT seq, sub, acct, t, tick, b16, dest, cell,
        (typ = 'voice' AND dir = 'mo') AS is_mo,
        (typ = 'voice' AND dir = 'mt') AS is_mt,
        (typ = 'data' OR (typ = 'sms' AND dir = 'mo')) AS is_data_sms,
        row_number() OVER (PARTITION BY sub ORDER BY seq) AS rn,
        count(*) OVER (PARTITION BY sub ORDER BY tick RANGE BETWEEN UNBOUNDED PRECEDING AND 4321 PRECEDING) AS old_tick
    FROM r SEMI JOIN sb_cand USING (sub)),
w AS (
    SELECT *,
        -- cell sums: 16-minute buckets at the 24 h edge
        count(*) FILTER (WHERE is_mo) OVER cum - coalesce(count(*) FILTER (WHERE is_mo) OVER old16, 0) AS mo,
        count(*) FILTER (WHERE is_mt) OVER cum - coalesce(count(*) FILTER (WHERE is_mt) OVER old16, 0) AS mt,
        count(*) FILTER (WHERE is_data_sms) OVER cum
            - coalesce(count(*) FILTER (WHERE is_data_sms) OVER old16, 0) AS data_sms,
        -- distinct counts: 20 s ticks
        count(DISTINCT CASE WHEN is_mo THEN dest END) OVER (PARTITION BY sub ORDER BY seq
            ROWS BETWEEN rn - 1 - old_tick PRECEDING AND CURRENT ROW) AS called,
        count(DISTINCT cell) OVER (PARTITION BY sub ORDER BY seq
            ROWS BETWEEN rn - 1 - old_tick PRECEDING AND CURRENT ROW) AS cells
    FROM rows
    WINDOW cum AS (PARTITION BY sub ORDER BY seq ROWS UNBOUNDED PRECEDING),
           old16 AS (PARTITION BY sub ORDER BY b16 RANGE BETWEEN UNBOUNDED PRECEDING AND 91 PRECEDING))
SELECT seq, sub, acct, t, mo, mt, data_sms, called, cells FROM w WHERE is_mo;

-- ---- verdicts, with each account's segment at the record's time (events first at a tie) --------
CREATE TABLE pairs AS
WITH irsf AS (
    SELECT 'irsf_high_risk_destination' AS rule, e.sub
    FROM irsf_eval e ASOF LEFT JOIN seg_ev s ON s.acct = e.acct AND e.t >= s.t
    JOIN params p ON p.segment = coalesce(s.segment, 'consumer')
    WHERE e.calls >= p.irsf_min_calls OR e.secs / 60.0 >= p.irsf_min_minutes),
sms AS (
    SELECT 'sms_sim_farm' AS rule, e.sub
    FROM sms_eval e ASOF LEFT JOIN seg_ev s ON s.acct = e.acct AND e.t >= s.t
    JOIN params p ON p.segment = coalesce(s.segment, 'consumer')
    WHERE CASE WHEN e.hour >= p.sms_min_per_hour THEN e.distinct_1h >= p.sms_min_distinct_share * e.hour
               WHEN e.day >= p.sms_min_per_day THEN e.distinct_24h >= p.sms_min_distinct_share * e.day
               ELSE false END
      AND NOT (${sms_whitelisted})),
sb AS (
    SELECT 'simbox_behaviour' AS rule, e.sub
    FROM sb_eval e ASOF LEFT JOIN seg_ev s ON s.acct = e.acct AND e.t >= s.t
    JOIN params p ON p.segment = coalesce(s.segment, 'consumer')
    WHERE e.mo >= p.sb_min_mo_calls
      AND e.mo::DOUBLE / (e.mt + 1) >= p.sb_min_mo_mt_ratio
      AND e.data_sms = 0
      AND e.called >= p.sb_min_distinct_called
      AND e.cells <= p.sb_max_cells
      AND NOT (${simbox_whitelisted}))
SELECT DISTINCT rule, sub FROM (FROM irsf UNION ALL FROM sms UNION ALL FROM sb);

COPY (SELECT rule, sub AS subscriber FROM pairs ORDER BY ALL) TO '${out}' (HEADER, DELIMITER ',');
