# traffic_control on a streaming hot standby, and after its promotion.
#
# - The standby enforces budgets from its own configuration: the same tagged
#   read-only statement is refused (SQLSTATE 53000, DESIGN.md's text) on one
#   node and admitted on the other, in both directions; explain() decides as
#   the node it runs on would.
# - Each node's budget_status counts only the statements run on that node.
#   The status views and explain() are readable on the standby;
#   shed()/unshed() and reset() work there (shared memory, not tables) and
#   leave the primary alone.
# - The extension writes nothing to WAL: on the primary, admitted, refused and
#   queued statements, status views, explain(), shed(), unshed() and reset()
#   add no WAL record of their own (pg_waldump over the range).
# - Replay goes on while the standby's budgets refuse every client statement
#   they catch (a catch-all default rule): rows inserted on the primary reach
#   the standby.
# - After promotion the node keeps enforcing its own configuration, its
#   counters carry on from before the promotion (shared memory outlives it:
#   the postmaster does not restart), so does a shed, and writes admitted by
#   its budgets work.
#
# Every wait is bounded: 30 s for a statement, the framework's timeouts for
# catching up and promoting.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $wait_seconds = 30;

# Tags and the budgets they fall into, the same rules on both nodes:
#   reads -> tap_reads   admitted on the primary, refused on the standby
#   other -> tap_other   refused on the primary, admitted on the standby
#   both  -> tap_both    admitted on both (what shed() works on)
#   queue -> tap_queue   primary only: one slot, waits 300 ms for it
# The standby also sends every statement no rule matches to standby_closed,
# which refuses everything (a catch-all a DBA might put on a reporting replica).
my $shared_rules =
    q{{"name":"reads","budget":"tap_reads","match":{"test":"reads"}},}
  . q{{"name":"other","budget":"tap_other","match":{"test":"other"}},}
  . q{{"name":"both","budget":"tap_both","match":{"test":"both"}}};
my $primary_budgets = q{[{"name":"tap_reads","mode":"enforce","max_concurrent":5},}
  . q{{"name":"tap_other","mode":"enforce","max_concurrent":0},}
  . q{{"name":"tap_both","mode":"enforce","max_concurrent":5},}
  . q{{"name":"tap_queue","mode":"enforce","max_concurrent":1,"queue_timeout_ms":300}]};
my $primary_rules =
  qq{[$shared_rules,{"name":"queue","budget":"tap_queue","match":{"test":"queue"}}]};
my $standby_budgets = q{[{"name":"tap_reads","mode":"enforce","max_concurrent":0},}
  . q{{"name":"tap_other","mode":"enforce","max_concurrent":5},}
  . q{{"name":"tap_both","mode":"enforce","max_concurrent":5},}
  . q{{"name":"standby_closed","mode":"enforce","max_concurrent":0}]};
my $standby_rules =
  qq{[$shared_rules,{"name":"everything_else","budget":"standby_closed","default":true}]};

# ---- a primary and a streaming standby with different budgets ----------------
# autovacuum is off on the primary so that nothing but the test writes WAL.
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'traffic_control'
autovacuum = off
traffic_control.budgets = '$primary_budgets'
traffic_control.rules = '$primary_rules'
});
$primary->start;
$primary->safe_psql('postgres',
	q{CREATE EXTENSION traffic_control; CREATE TABLE replayed (id int)});

# The backup copies postgresql.conf (and postgresql.auto.conf): the standby
# gets the primary's settings, and its own are appended afterwards, as a DBA
# would have to.
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf(
	'postgresql.conf', qq{
traffic_control.budgets = '$standby_budgets'
traffic_control.rules = '$standby_rules'
});
$standby->start;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery() /*test=\'both\'*/'),
	't', 'the standby is in recovery');

# Runs SQL in a new session, with verbose errors (the SQLSTATE in the text):
# 'admitted' when it succeeds, 'refused by <budget>: <limit>' for a 53000
# refusal, anything else verbatim.
sub outcome_of
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) = $node->psql(
		'postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ],
		timeout => $wait_seconds);
	return 'admitted' if $ret == 0 && $stderr eq '';
	return "refused by $1: $2"
	  if $stderr =~ /ERROR:  53000: .*query blocked by budget "([^"]+)": (.+)$/m;
	return "unexpected: ret=$ret stdout=$stdout stderr=$stderr";
}

# A read-only statement carrying the tag test=<tag>.
sub try_tag
{
	my ($node, $tag) = @_;
	return outcome_of($node, "SELECT 'admitted' /*test='$tag'*/");
}

# One budget's counters on a node: "admitted=A blocked=B".
sub counters
{
	my ($node, $budget) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT format('admitted=%s blocked=%s', coalesce(sum(admitted), 0), coalesce(sum(blocked), 0))
  FROM traffic_control.budget_status WHERE budget = '$budget'});
}

# ---- each node enforces its own configuration -----------------------------------
# Catches a standby that admits with the primary's settings (or ignores its
# own), and a primary that picked up the standby's.
is(try_tag($primary, 'reads'), 'admitted', 'primary: tagged read admitted by tap_reads');
is( try_tag($standby, 'reads'),
	'refused by tap_reads: max_concurrent exceeded',
	'standby: the same read is refused by its own tap_reads (53000)');
is( try_tag($primary, 'other'),
	'refused by tap_other: max_concurrent exceeded',
	'primary: tagged read refused by tap_other (53000)');
is(try_tag($standby, 'other'), 'admitted', 'standby: the same read is admitted there');
is( outcome_of($standby, 'SELECT 1'),
	'refused by standby_closed: max_concurrent exceeded',
	'standby: its catch-all rule refuses an untagged read');
is(outcome_of($primary, 'SELECT 1'), 'admitted',
	'primary: no catch-all there, an untagged read runs');

# explain() judges with the configuration of the node it runs on.
my $explain = q{SELECT budget || ' ' || decision FROM traffic_control.explain($$SELECT 1 /*test='reads'*/$$)};
is($standby->safe_psql('postgres', $explain), 'tap_reads refuse',
	'standby: explain() decides with the standby\'s budgets');
is($primary->safe_psql('postgres', $explain), 'tap_reads admit',
	'primary: explain() decides with the primary\'s budgets');

# ---- counters are per node; views, shed, unshed and reset work on the standby ---
$_->safe_psql('postgres', 'SELECT traffic_control.reset()') for ($primary, $standby);
try_tag($standby, 'reads') for 1 .. 3;    # refused
try_tag($standby, 'other') for 1 .. 2;    # admitted
try_tag($primary, 'reads') for 1 .. 4;    # admitted
try_tag($primary, 'other') for 1 .. 5;    # refused
# Catches counters shared through anything replicated, or one node's
# statements counted on the other.
is(counters($standby, 'tap_reads'), 'admitted=0 blocked=3',
	'standby: tap_reads counts only the standby\'s refusals');
is(counters($standby, 'tap_other'), 'admitted=2 blocked=0',
	'standby: tap_other counts only the standby\'s admissions');
is(counters($primary, 'tap_reads'), 'admitted=4 blocked=0',
	'primary: tap_reads counts only the primary\'s admissions');
is(counters($primary, 'tap_other'), 'admitted=0 blocked=5',
	'primary: tap_other counts only the primary\'s refusals');

# Every status view reads on the standby, and its catch-all does not refuse
# them (the control plane is never admitted).
for my $view (qw(budget_status rule_status pattern_estimates violation_history))
{
	is(outcome_of($standby, "SELECT count(*) FROM traffic_control.$view"),
		'admitted', "standby: traffic_control.$view is readable");
}

# shed() and unshed() on the standby: its own shared memory, nothing written.
is(outcome_of($standby, q{SELECT traffic_control.shed('tap_both', '1 hour')}),
	'admitted', 'standby: shed() works in recovery');
is(try_tag($standby, 'both'), 'refused by tap_both: shed', 'standby: the shed budget refuses');
is(try_tag($primary, 'both'), 'admitted', 'primary: the standby\'s shed does not reach it');
is( $standby->safe_psql(
		'postgres',
		q{SELECT shed_until > now() FROM traffic_control.budget_status WHERE budget = 'tap_both'}),
	't',
	'standby: budget_status shows the shed');
is($standby->safe_psql('postgres', q{SELECT traffic_control.unshed('tap_both')}),
	't', 'standby: unshed() ends it');
is(try_tag($standby, 'both'), 'admitted', 'standby: admitted again after unshed()');

# reset() on the standby zeroes its counters only.
$standby->safe_psql('postgres', 'SELECT traffic_control.reset()');
is(counters($standby, 'tap_reads'), 'admitted=0 blocked=0',
	'standby: reset() zeroes its counters');
is(counters($primary, 'tap_other'), 'admitted=0 blocked=5',
	'primary: the standby\'s reset() leaves its counters');

# ---- nothing the extension does writes WAL --------------------------------------
# Measured as the WAL records between two insert positions on the primary,
# read with pg_waldump. The LSN alone would be flaky: PostgreSQL writes records
# of its own on an idle server, the bgwriter's running-xacts snapshot (Standby
# RUNNING_XACTS, within 15 s of a checkpoint: LOG_SNAPSHOT_INTERVAL_MS), and,
# since a streaming primary has wal_log_hints on, a full-page image when a read
# first sets a hint bit on a page after a checkpoint (XLOG FPI_FOR_HINT). Those
# two are allowed; anything the extension wrote to a table, an index, a
# sequence or a catalog would show as Heap, Btree, Sequence, Transaction or
# Storage records, and fails the check (the INSERT check below shows the
# measure sees one). To keep the range empty in practice: autovacuum is off,
# VACUUM FREEZE sets the hint bits first, and a first pass of the same
# statements (not measured) lets PostgreSQL do its one-time work before the
# checkpoint that starts the measured pass. (Runs here: the range is empty.)

# The records from $start to $end on the primary that PostgreSQL does not
# write by itself on an idle server.
sub foreign_wal_records
{
	my ($start, $end) = @_;
	note "WAL from $start to $end";
	return () if $start eq $end;
	$primary->safe_psql('postgres', 'CHECKPOINT');    # flushes the range to disk
	my ($stdout, $stderr) = run_command(
		[ 'pg_waldump', '-p', $primary->data_dir . '/pg_wal', '-s', $start, '-e', $end ]);
	my @records = grep { /^rmgr:/ } split /\n/, $stdout;
	note "WAL record: $_" for @records;
	return ("pg_waldump failed: $stderr") if !@records;
	return grep {
		!/^rmgr: Standby .* desc: RUNNING_XACTS/
		  && !/^rmgr: XLOG .* desc: FPI_FOR_HINT/
	} @records;
}

sub insert_lsn
{
	return $primary->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
}

# Admitted, refused and queued statements, the views, explain(), shed(),
# unshed() and reset(), each in its own session, as clients run them.
sub control_batch
{
	my @outcomes = (outcome_of($primary, q{SELECT traffic_control.reset()}));
	push @outcomes, try_tag($primary, 'reads'), try_tag($primary, 'other');
	# One session holds tap_queue's only slot with an open cursor (a read-only
	# transaction, no xid); the next statement waits 300 ms and is refused.
	my $holder = $primary->background_psql('postgres', on_error_stop => 0,
		timeout => $wait_seconds);
	$holder->query_safe(
		q{BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g /*test='queue'*/; FETCH 1 FROM c;});
	push @outcomes, try_tag($primary, 'queue');
	$holder->query_safe('COMMIT');
	$holder->quit;
	push @outcomes, try_tag($primary, 'queue');
	for my $sql (
		q{SELECT count(*) FROM traffic_control.budget_status},
		q{SELECT count(*) FROM traffic_control.rule_status},
		q{SELECT count(*) FROM traffic_control.pattern_estimates},
		q{SELECT count(*) FROM traffic_control.violation_history},
		q{SELECT count(*) FROM traffic_control.explain($$SELECT 1 /*test='reads'*/$$)},
		q{SELECT traffic_control.shed('tap_both', '1 hour')},
		q{SELECT traffic_control.unshed('tap_both')})
	{
		push @outcomes, outcome_of($primary, $sql);
	}
	return join(', ', @outcomes);
}

my $expected_batch = 'admitted, admitted, refused by tap_other: max_concurrent exceeded, '
  . 'refused by tap_queue: max_concurrent exceeded, admitted'
  . (', admitted' x 7);
$primary->safe_psql('postgres', 'VACUUM FREEZE');
is(control_batch(), $expected_batch, 'WAL: the first pass admits, refuses and queues');
$primary->safe_psql('postgres', 'CHECKPOINT');
my $wal_start = insert_lsn();
is(control_batch(), $expected_batch, 'WAL: the measured pass decides the same');
my $wal_end = insert_lsn();
is_deeply([ foreign_wal_records($wal_start, $wal_end) ],
	[], 'WAL: the extension wrote no WAL record');
# The holder's cursor and the statement after it admitted, the one that waited
# refused: counted from the batch's own reset().
is( $primary->safe_psql(
		'postgres',
		q{SELECT format('admitted=%s blocked=%s queued=%s', admitted, blocked, queued)
		    FROM traffic_control.budget_status WHERE budget = 'tap_queue'}),
	'admitted=2 blocked=1 queued=1',
	'WAL: the measured pass did reach the budgets');

# The same measure sees a real write: catches a check that reads nothing.
$wal_start = insert_lsn();
$primary->safe_psql('postgres', q{INSERT INTO replayed VALUES (0) /*test='both'*/});
$wal_end = insert_lsn();
ok( (grep { /^rmgr: Heap .* desc: INSERT/ } foreign_wal_records($wal_start, $wal_end)),
	'WAL: an INSERT in the range is seen');

# ---- replay goes on while the standby refuses -------------------------------------
$primary->safe_psql('postgres',
	q{INSERT INTO replayed SELECT g FROM generate_series(1, 100) g /*test='both'*/});
is(outcome_of($standby, 'SELECT count(*) FROM replayed'),
	'refused by standby_closed: max_concurrent exceeded',
	'replay: the standby refuses untagged reads of the table meanwhile');
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
is( $standby->safe_psql('postgres', q{SELECT count(*) FROM replayed /*test='both'*/}),
	'101', 'replay: the rows inserted on the primary are on the standby');

# ---- promotion ----------------------------------------------------------------------
try_tag($standby, 'reads') for 1 .. 2;
is(counters($standby, 'tap_reads'), 'admitted=0 blocked=2',
	'promotion: the standby counted its refusals');
$standby->safe_psql('postgres', q{SELECT traffic_control.shed('tap_both', '1 hour')});
$standby->promote;    # pg_ctl promote waits until the node accepts writes
is($standby->safe_psql('postgres', q{SELECT pg_is_in_recovery() /*test='other'*/}),
	'f', 'promoted: out of recovery');
is( try_tag($standby, 'reads'),
	'refused by tap_reads: max_concurrent exceeded',
	'promoted: still refuses by its own tap_reads');
is(try_tag($standby, 'other'), 'admitted', 'promoted: still admits by its own tap_other');
is(try_tag($standby, 'both'), 'refused by tap_both: shed',
	'promoted: a shed made in recovery still holds');
$standby->safe_psql('postgres', q{SELECT traffic_control.unshed('tap_both')});
# Shared memory outlives a promotion (no restart): the counters carry on.
is(counters($standby, 'tap_reads'), 'admitted=0 blocked=3',
	'promoted: the counters continue from before the promotion');
is( outcome_of($standby, q{INSERT INTO replayed VALUES (200) /*test='both'*/}),
	'admitted', 'promoted: a write admitted by tap_both works');
is( outcome_of($standby, q{INSERT INTO replayed VALUES (201)}),
	'refused by standby_closed: max_concurrent exceeded',
	'promoted: the catch-all still refuses an untagged write');
is($standby->safe_psql('postgres', q{SELECT count(*) FROM replayed /*test='both'*/}),
	'102', 'promoted: the admitted write is there, the refused one is not');

$standby->stop;
$primary->stop;
done_testing();
