# traffic_control: configuration reloads and loading.
#
# - A bad traffic_control.budgets written to postgresql.conf and reloaded is
#   rejected: the last good configuration stays in force (the budget still
#   refuses) and the server log names the item and the field.
# - In a server that did not preload it, LOAD 'traffic_control' succeeds and
#   does nothing (pg_upgrade loads every library it finds), CREATE EXTENSION
#   works and the extension's functions say how to load it.
# - The postmaster builds the rule set once at startup (and logs a skipped
#   rule once) and new sessions use it; after a reload, sessions build the
#   new one.
# - A budget shed with traffic_control.shed() stays shed until a restart.
# - So does a pattern quarantined by quarantine_s (a reload keeps it).
#
# Every wait is bounded (30 s).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $wait_seconds = 30;
my $tagged = q{SELECT 'admitted' /*test='one'*/};
my $refusal = qr/query blocked by budget "tap_one": max_concurrent exceeded/;
my $good_budgets =
  q{[{"name":"tap_one","mode":"enforce","max_concurrent":1}]};

# ---- a bad value in a reloaded postgresql.conf keeps the last good one ------
my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'traffic_control'
traffic_control.budgets = '$good_budgets'
traffic_control.rules = '[{"name":"tap_one","budget":"tap_one","match":{"test":"one"}}]'
});
$node->start;

# Runs the tagged statement in a session: ('admitted' | 'refused' | other).
sub outcome
{
	my ($ret, $stdout, $stderr) = @_;
	return 'admitted' if $ret == 0 && $stdout eq 'admitted';
	return 'refused' if $stderr =~ $refusal;
	return "unexpected: ret=$ret stdout=$stdout stderr=$stderr";
}

sub try_tagged
{
	return outcome($node->psql('postgres', $tagged, timeout => $wait_seconds));
}

sub try_tagged_in
{
	my ($session) = @_;
	$session->{stderr} = '';    # query() keeps the stderr of earlier queries
	my ($stdout, $failed) = $session->query($tagged);
	return outcome($failed ? 1 : 0, $stdout, $session->{stderr});
}

# Polls the server log (from byte $offset) for $regexp.
sub wait_for_log
{
	my ($regexp, $offset) = @_;
	my $deadline = time() + $wait_seconds;
	while (time() < $deadline)
	{
		return 1 if slurp_file($node->logfile, $offset) =~ $regexp;
		usleep(100_000);
	}
	diag "timed out waiting for $regexp in the server log";
	return 0;
}

# Polls until a new session's tagged statement has outcome $expected.
sub wait_for_outcome
{
	my ($expected) = @_;
	my $deadline = time() + $wait_seconds;
	my $last = '';
	while (time() < $deadline)
	{
		$last = try_tagged();
		return 1 if $last eq $expected;
		usleep(100_000);
	}
	diag "tagged statement: expected $expected, last $last";
	return 0;
}

# One session holds the only slot with an open cursor; another session,
# connected before the reload, checks the configuration it sees afterwards.
# Background psql sessions: the $wait_seconds timer restarts with every query.
sub start_session
{
	my $session = $node->background_psql('postgres',
		on_error_stop => 0, timeout => $wait_seconds);
	$session->set_query_timer_restart;
	return $session;
}

sub end_session
{
	my ($session) = @_;
	$session->{timeout}->start;
	$session->quit;
}

my $holder = start_session();
$holder->query_safe(
	"BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g /*test='one'*/; FETCH 1 FROM c;"
);
my $old_session = start_session();
is(try_tagged(), 'refused', 'good config: the held slot refuses another session');
is(try_tagged_in($old_session), 'refused', 'good config: also in an open session');

# The bad value would admit everything if it were applied (mode off); its
# max_concurrent is invalid.
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf',
	q{traffic_control.budgets = '[{"name":"tap_one","mode":"off","max_concurrent":-1}]'}
	  . "\n");
$node->reload;
ok( wait_for_log(
		qr/configuration file ".*" contains errors/,
		$log_offset),
	'bad config: the reload reports errors');
my $log = slurp_file($node->logfile, $log_offset);
like(
	$log,
	qr/invalid value for parameter "traffic_control\.budgets"/,
	'bad config: the log names the parameter');
like($log, qr/budgets\[0\]\.max_concurrent/,
	'bad config: the log names the item and the field');

is($node->safe_psql('postgres', 'SHOW traffic_control.budgets'),
	$good_budgets, 'bad config: the last good value is kept');
is(try_tagged(), 'refused', 'bad config: a new session is still refused');
is(try_tagged_in($old_session), 'refused',
	'bad config: an open session is still refused');

# A good value reloaded afterwards is applied: max_concurrent 2 admits a
# second statement.
$node->append_conf('postgresql.conf',
	q{traffic_control.budgets = '[{"name":"tap_one","mode":"enforce","max_concurrent":2}]'}
	  . "\n");
$node->reload;
ok(wait_for_outcome('admitted'), 'good config again: applied after the bad one');
my $deadline = time() + $wait_seconds;
my $seen = '';
while (time() < $deadline)
{
	$seen = try_tagged_in($old_session);
	last if $seen eq 'admitted';
	usleep(100_000);
}
is($seen, 'admitted', 'good config again: the open session applies it too');

$holder->query_safe('COMMIT');
end_session($holder);
end_session($old_session);

# ---- traffic_control.shed() lasts until a restart ------------------------------
$node->safe_psql('postgres',
	q{CREATE EXTENSION traffic_control; SELECT traffic_control.shed('tap_one', '1 hour')});
my ($shed_ret, $shed_out, $shed_err) =
  $node->psql('postgres', $tagged, timeout => $wait_seconds);
like($shed_err, qr/query blocked by budget "tap_one": shed/, 'shed: the budget refuses');
$node->restart;
is(try_tagged(), 'admitted', 'shed: a restart ends the shed');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM traffic_control.budget_status WHERE shed_until IS NOT NULL}),
	'0',
	'shed: budget_status shows no shed after the restart');

# ---- a quarantine (quarantine_s) lasts until a restart -------------------------
$node->safe_psql(
	'postgres', q{
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"tap_q","mode":"enforce","max_duration_ms":100,"quarantine_s":3600}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"tap_q","budget":"tap_q","match":{"test":"q"}}]';
SELECT pg_reload_conf();
});
my $runaway = q{SELECT pg_sleep(2.0) /*test='q'*/};
my $canceled = qr/query canceled by budget "tap_q": max_duration_ms exceeded/;
my $quarantined = qr/query blocked by budget "tap_q": quarantined/;
sub runaway_error
{
	my ($ret, $out, $err) = $node->psql('postgres', $runaway, timeout => $wait_seconds);
	return $err;
}
like(runaway_error(), $canceled, 'quarantine: the runaway statement is canceled');
like(runaway_error(), $quarantined, 'quarantine: then its pattern is refused');
$node->reload;
like(runaway_error(), $quarantined, 'quarantine: a reload keeps it');
$node->restart;
is($node->safe_psql('postgres', q{SELECT count(*) FROM traffic_control.quarantine}),
	'0', 'quarantine: the view is empty after a restart');
like(runaway_error(), $canceled, 'quarantine: a restart ends it (the statement runs again)');
$node->stop;

# ---- the postmaster builds the rule set once, for every backend ----------------
my $preload = PostgreSQL::Test::Cluster->new('preload');
$preload->init;
$preload->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'traffic_control'
log_min_messages = debug1
traffic_control.budgets = '$good_budgets'
traffic_control.rules = '[{"name":"tap_one","budget":"tap_one","match":{"test":"one"}},{"name":"stray","budget":"no_such_budget","match":{"test":"stray"}}]'
});
$preload->start;
my $stray = qr/traffic_control: rule "stray": budget "no_such_budget" does not exist; rule skipped/;

# How many processes have built a rule set so far (DEBUG1 log lines).
sub builds
{
	my @lines = slurp_file($preload->logfile) =~
	  /traffic_control: configuration loaded/g;
	return scalar @lines;
}

sub try_tagged_on_preload
{
	return outcome(
		$preload->psql('postgres', $tagged, timeout => $wait_seconds));
}

is(builds(), 1, 'startup: the postmaster builds the rule set once');
is(try_tagged_on_preload(), 'admitted', "new session $_: the rule set applies")
  for 1 .. 3;
is(builds(), 1, 'new sessions start with the postmaster\'s rule set');
my @stray_lines = slurp_file($preload->logfile) =~ /$stray/g;
is(scalar @stray_lines, 1, 'a rule skipped at startup is logged once, by the postmaster');

$preload->append_conf('postgresql.conf',
	q{traffic_control.budgets = '[{"name":"tap_one","mode":"enforce","max_concurrent":0}]'}
);
$preload->reload;
my $deadline = time() + $wait_seconds;
my $after_reload = '';
while (time() < $deadline)
{
	$after_reload = try_tagged_on_preload();
	last if $after_reload eq 'refused';
	usleep(100_000);
}
is($after_reload, 'refused', 'after a reload: a new session applies the new budgets');
cmp_ok(builds(), '>', 1, 'after a reload: sessions build the new rule set');
$preload->stop;

# ---- LOAD without shared_preload_libraries ----------------------------------
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($ret, $stdout, $stderr) =
  $plain->psql('postgres', q{LOAD 'traffic_control'}, timeout => $wait_seconds);
is($ret, 0, 'LOAD without preloading succeeds (as pg_stat_statements)');
is($stderr, '', 'LOAD without preloading: nothing is raised');
($ret, $stdout, $stderr) = $plain->psql(
	'postgres',
	q{CREATE EXTENSION traffic_control; SELECT * FROM traffic_control.budget_status},
	timeout => $wait_seconds);
isnt($ret, 0, 'a view without preloading fails');
like(
	$stderr,
	qr/traffic_control.budget_status needs traffic_control to be loaded via shared_preload_libraries/,
	'a view without preloading: the error says how to load it');
is($plain->safe_psql('postgres', 'SELECT 1'), '1',
	'LOAD without preloading: the server keeps working');
$plain->stop;

done_testing();
