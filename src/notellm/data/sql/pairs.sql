-- Co-occurrence pair mining (NoteLLM): s(A->B) = sum over users i of 1/N_i.
--
-- One query for DuckDB and Spark SQL: only standard window functions, joins and CTEs; no engine-specific
-- functions. `notellm.data.pairs.pair_sql(config, dialect)` puts the blocks below together (each starts at a
-- `-- name:` line) and fills the {placeholders} from PairMiningConfig.
--
-- Input: a relation `clicks` with one row per click, made by the engine's reader in pairs.py:
--   user_id STRING, note_id STRING, t BIGINT (microseconds since 1970, 0 when the events have no time),
--   session_id STRING (NULL without sessions), seq BIGINT (NULL when absent), src_file STRING, src_row BIGINT
--   (file order: the last tie-breaker).

-- name: ordered
-- Each user's clicks in time order; equal times by seq, then by file order (ml-i2i-v1).
SELECT user_id, note_id, t, session_id,
       ROW_NUMBER() OVER (PARTITION BY user_id
                          ORDER BY t, seq NULLS LAST, src_file, src_row) AS upos
FROM clicks

-- name: sessions_none
-- No sessions: a user's whole history is one sequence.
SELECT user_id, note_id, upos, '' AS sess FROM ordered

-- name: sessions_column
SELECT user_id, note_id, upos, session_id AS sess FROM ordered

-- name: sessions_gap
-- A new session starts where the time since the user's previous click exceeds the gap.
SELECT user_id, note_id, upos,
       CAST(SUM(new_session) OVER (PARTITION BY user_id ORDER BY upos
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS STRING) AS sess
FROM (
  SELECT user_id, note_id, upos,
         CASE WHEN t - LAG(t) OVER (PARTITION BY user_id ORDER BY upos) > {gap_us} THEN 1 ELSE 0 END
           AS new_session
  FROM ordered
) gaps

-- name: first_clicks
-- dedupe_clicks: only the first click of a note in a sequence counts (later repeats are not clicks).
SELECT user_id, note_id, upos, sess
FROM (
  SELECT user_id, note_id, upos, sess,
         ROW_NUMBER() OVER (PARTITION BY user_id, sess, note_id ORDER BY upos) AS nth
  FROM sessioned
) repeats
WHERE nth = 1

-- name: positioned
-- Position in the sequence (1..N) and N, the number of clicks in it.
SELECT user_id, sess, note_id,
       ROW_NUMBER() OVER (PARTITION BY user_id, sess ORDER BY upos) AS pos,
       COUNT(*) OVER (PARTITION BY user_id, sess) AS n
FROM {source}

-- name: window_pairs
-- Each click A pairs with each of the next {window} clicks B (B != A): an equi-join on the position A + k,
-- so the work is linear in the number of clicks (a range join would be quadratic per user).
SELECT a.note_id AS note_a, b.note_id AS note_b, CAST(1 AS DOUBLE) / a.n AS w
FROM positioned a
JOIN offsets o ON o.k <= a.n - a.pos
JOIN positioned b ON b.user_id = a.user_id AND b.sess = a.sess AND b.pos = a.pos + o.k
WHERE a.note_id <> b.note_id

-- name: session_notes
-- The distinct notes of each session, their first position, and N = how many distinct notes it has.
SELECT user_id, sess, note_id, first_pos, COUNT(*) OVER (PARTITION BY user_id, sess) AS n
FROM (
  SELECT user_id, sess, note_id, MIN(upos) AS first_pos FROM sessioned GROUP BY user_id, sess, note_id
) distinct_notes

-- name: session_pairs
-- Every ordered pair of distinct notes of a session (only A first when directed).
SELECT a.note_id AS note_a, b.note_id AS note_b, CAST(1 AS DOUBLE) / a.n AS w
FROM session_notes a
JOIN session_notes b ON b.user_id = a.user_id AND b.sess = a.sess AND b.note_id <> a.note_id
WHERE {directed}

-- name: scored
-- Rounded so that the order of a floating-point sum (threads, engines) cannot change ties or thresholds.
SELECT note_a, note_b, ROUND(SUM(w), {decimals}) AS score
FROM raw_pairs
GROUP BY note_a, note_b

-- name: select
-- Keep l <= s <= u, then the top t B per A: higher score first, ties by note_b (ascending).
SELECT note_a, note_b, score
FROM (
  SELECT note_a, note_b, score,
         ROW_NUMBER() OVER (PARTITION BY note_a ORDER BY score DESC, note_b) AS rnk
  FROM scored
  WHERE {score_filter}
) ranked
WHERE {top_filter}
ORDER BY note_a, score DESC, note_b

-- name: check
-- Input facts and problems, counted in one pass.
SELECT COUNT(*) AS events,
       COUNT(DISTINCT user_id) AS users,
       COUNT(DISTINCT note_id) AS notes,
       SUM(CASE WHEN user_id IS NULL OR user_id = '' THEN 1 ELSE 0 END) AS missing_user,
       SUM(CASE WHEN note_id IS NULL OR note_id = '' THEN 1 ELSE 0 END) AS missing_note,
       SUM(CASE WHEN t IS NULL THEN 1 ELSE 0 END) AS missing_time,
       SUM(CASE WHEN session_id IS NULL THEN 1 ELSE 0 END) AS missing_session
FROM clicks

-- name: first_bad_row
SELECT src_file, src_row FROM clicks WHERE {condition} ORDER BY src_file, src_row LIMIT 1
