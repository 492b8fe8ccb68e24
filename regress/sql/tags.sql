-- SQLCommenter tags: which comment counts, decoding, malformed tags.
-- Budget "tag_shed" sheds everything its rule matches (max_concurrent 0).
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"tag_shed","mode":"enforce","max_concurrent":0},{"name":"tag_warn","mode":"warn","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"by_route","budget":"tag_shed","match":{"route":"/api/export"}}, {"name":"by_quote","budget":"tag_shed","match":{"note":"it''s"}}, {"name":"warn_me","budget":"tag_warn","match":{"route":"warn-me"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
\set VERBOSITY terse

-- The tag comment at the end of the statement, with or without ';'.
SELECT 1 AS tagged /*route='%2Fapi%2Fexport'*/;
SELECT 1 AS tagged /*route='%2Fapi%2Fexport'*/
;
SELECT 1 AS tagged_spaces /* route = '%2Fapi%2Fexport' , other = 'x' */;
SELECT 1 AS tagged_escape /*note='it\'s'*/;
-- Not the same value: no match.
SELECT 1 AS other_value /*route='/api/exports'*/;
-- A comment that is not last is not the tag comment.
SELECT 1 /*route='%2Fapi%2Fexport'*/ + 1 AS not_last;
-- A comment inside a string literal is not a comment.
SELECT '/*route=''%2Fapi%2Fexport''*/' AS in_literal;
SELECT $$ /*route='%2Fapi%2Fexport'*/ $$ AS in_dollar_quotes;
-- The last comment wins.
SELECT 1 AS last_wins /*route='%2Fapi%2Fexport'*/ /*route='other'*/;
SELECT 1 AS last_wins /*route='other'*/ /*route='%2Fapi%2Fexport'*/;

-- Malformed tags are skipped, never an error; good pairs beside them count.
SELECT 1 AS malformed /*route=unquoted*/;
SELECT 1 AS malformed /*route='unterminated*/;
SELECT 1 AS malformed /*route='%zz'*/;
SELECT 1 AS malformed /*='x', route*/;
SELECT 1 AS malformed /*,,,*/;
SELECT 1 AS malformed /**/;
SELECT 1 AS malformed_then_good /*junk, route='%2Fapi%2Fexport'*/;
SELECT 1 AS key_too_long /*kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk='x'*/;
SELECT 1 AS multi_line_comment /*route='%2Fapi%2Fexport'

*/;
-- A value over 1024 bytes is skipped (the rest of the comment still counts).
SELECT format('SELECT 1 AS long_value /*big=''%s'', route=''%%2Fapi%%2Fexport''*/', repeat('v', 1025)) AS q \gset
:q;

-- In a multi-statement string each statement carries its own comment.
-- (With a warn budget exactly one NOTICE is sent: only one statement matched.
-- With the enforce budget, the untagged first statement runs and the tagged
-- second one is refused.)
\set VERBOSITY default
SELECT 1 AS first_untagged \; SELECT 2 AS second_tagged /*route='warn-me'*/;
SELECT 1 AS first_tagged /*route='warn-me'*/ \; SELECT 2 AS second_untagged;
SELECT 1 AS first_untagged \; SELECT 2 AS second_tagged /*route='%2Fapi%2Fexport'*/;

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
