-- Co-occurrence pair mining (NoteLLM): s(A->B) = sum over users i of 1/N_i.
--
-- One query for DuckDB and Spark SQL: window functions and CTEs; the only engine-specific words are the
-- list aggregate ({collect}: DuckDB `list`, Spark `collect_list`) and its expansion into rows ({explode}:
-- DuckDB `unnest`, Spark `explode`), plus one optional DuckDB-only block (top_candidates_duckdb) that
-- narrows the final ranking. `notellm.data.pairs.pair_sql(config, dialect)` puts the blocks below together
-- (each starts at a `-- name:` line) and fills the {placeholders} from PairMiningConfig.
--
-- Input: a relation `clicks` with one row per click, made by each engine's reader in pairs.py:
--   user_id, note_id (keys: strings, or integer codes that sort like the note id strings),
--   t BIGINT (microseconds since 1970; 0 when the events have no time), session_id (NULL without sessions),
--   seq BIGINT (0 when the events have no seq), ord BIGINT (file order: file number * 2^40 + row in file).
-- A user's clicks are ordered by (t, seq, ord): time, then seq, then file order (ml-i2i-v1).

-- name: sessions_none
-- No sessions: a user's whole history is one sequence.
SELECT user_id, note_id, t, seq, ord, 0 AS sess FROM clicks

-- name: sessions_column
SELECT user_id, note_id, t, seq, ord, session_id AS sess FROM clicks

-- name: sessions_gap
-- A new session starts where the time since the user's previous click exceeds the gap.
SELECT user_id, note_id, t, seq, ord,
       SUM(new_session) OVER (PARTITION BY user_id ORDER BY {order}
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sess
FROM (
  SELECT user_id, note_id, t, seq, ord,
         CASE WHEN t - LAG(t) OVER (PARTITION BY user_id ORDER BY {order}) > {gap_us} THEN 1 ELSE 0 END
           AS new_session
  FROM clicks
) gaps

-- name: first_clicks
-- dedupe_clicks: only the first click of a note in a sequence counts (later repeats are not clicks).
SELECT user_id, note_id, t, seq, ord, sess
FROM (
  SELECT user_id, note_id, t, seq, ord, sess,
         ROW_NUMBER() OVER (PARTITION BY user_id, sess, note_id ORDER BY {order}) AS nth
  FROM sessioned
) repeats
WHERE nth = 1

-- name: window_pairs
-- Each click A with the list of the next {window} clicks of its sequence (a window frame: linear work, no
-- self-join), then one row per (A, B) with B != A, weighted 1/N (N = clicks in the sequence).
SELECT note_a, note_b, w
FROM (
  SELECT note_id AS note_a, {explode}(next_notes) AS note_b, CAST(1 AS DOUBLE) / n AS w
  FROM (
    SELECT note_id,
           COUNT(*) OVER (PARTITION BY user_id, sess) AS n,
           {collect}(note_id) OVER (PARTITION BY user_id, sess ORDER BY {order}
                                    ROWS BETWEEN 1 FOLLOWING AND {window} FOLLOWING) AS next_notes
    FROM {source}
  ) frames
) contributions
WHERE note_b <> note_a

-- name: session_notes
-- The distinct notes of each sequence and the position of their first click.
SELECT user_id, sess, note_id, MIN(pos) AS first_pos
FROM (
  SELECT user_id, sess, note_id, ROW_NUMBER() OVER (PARTITION BY user_id, sess ORDER BY {order}) AS pos
  FROM sessioned
) ranked_clicks
GROUP BY user_id, sess, note_id

-- name: session_pairs
-- Each distinct note A with the list of the other notes of its sequence (with `directed`: those clicked
-- after A), one row per (A, B), weighted 1/N (N = distinct notes in the sequence).
SELECT note_a, note_b, w
FROM (
  SELECT note_id AS note_a, {explode}(partners) AS note_b, CAST(1 AS DOUBLE) / n AS w
  FROM (
    SELECT note_id,
           COUNT(*) OVER (PARTITION BY user_id, sess) AS n,
           {collect}(note_id) OVER (PARTITION BY user_id, sess ORDER BY first_pos
                                    ROWS BETWEEN {frame_start} AND UNBOUNDED FOLLOWING) AS partners
    FROM session_notes
  ) frames
) contributions
WHERE note_b <> note_a

-- name: scored
-- Rounded so that the order of a floating-point sum (threads, engines) cannot change ties or thresholds.
SELECT note_a, note_b, ROUND(SUM(w), {decimals}) AS score
FROM raw_pairs
GROUP BY note_a, note_b

-- name: in_range
-- Keep l <= s <= u.
SELECT note_a, note_b, score FROM scored WHERE {score_filter}

-- name: top_candidates_duckdb
-- DuckDB only, for speed (the ranking is the same without it): the pairs in [l, u] that can be in the top t
-- of their A, i.e. score >= the t-th best score of A (ties included), so the ranking sorts ~t rows per A.
SELECT r.note_a, r.note_b, r.score
FROM scored r
JOIN (SELECT note_a, list_last(max(score, {top_k})) AS kth FROM scored WHERE {score_filter} GROUP BY note_a) k
  ON k.note_a = r.note_a
WHERE r.score >= k.kth AND {score_filter}

-- name: select
-- The top t B per A: higher score first, ties by note_b (ascending).
SELECT note_a, note_b, score
FROM (
  SELECT note_a, note_b, score,
         ROW_NUMBER() OVER (PARTITION BY note_a ORDER BY score DESC, note_b) AS rnk
  FROM {ranked}
) ranked
WHERE {top_filter}

-- name: file_numbers
-- Files in name order, numbered from 0 (for `ord`).
SELECT src_file, ROW_NUMBER() OVER (ORDER BY src_file) - 1 AS file_number
FROM (SELECT DISTINCT src_file FROM {relation}) files

-- name: check
-- Input facts and problems, counted in one pass over the events as read (string ids).
SELECT COUNT(*) AS events,
       COUNT(DISTINCT user_id) AS users,
       COUNT(DISTINCT note_id) AS notes,
       SUM(CASE WHEN user_id IS NULL OR user_id = '' THEN 1 ELSE 0 END) AS missing_user,
       SUM(CASE WHEN note_id IS NULL OR note_id = '' THEN 1 ELSE 0 END) AS missing_note,
       SUM(CASE WHEN t IS NULL THEN 1 ELSE 0 END) AS missing_time,
       SUM(CASE WHEN session_id IS NULL THEN 1 ELSE 0 END) AS missing_session
FROM {relation}

-- name: first_bad_row
SELECT src_file, src_row FROM {relation} WHERE {condition} ORDER BY src_file, src_row LIMIT 1
