# traffic_control: a concurrency slot is freed when the backend holding it
# ends abruptly -- pg_terminate_backend, client disconnect, a backend crash
# (kill -9 and the postmaster's crash restart) -- and a backend terminated
# while it waits for a slot leaves the queue.
#
# Budget tap_one: enforce, max_concurrent 1, for statements tagged test='one'.
# Budget tap_queue: the same with queue_timeout_ms 60000, tag test='queue'.
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

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'traffic_control'
restart_after_crash = on
traffic_control.budgets = '[{"name":"tap_one","mode":"enforce","max_concurrent":1},{"name":"tap_queue","mode":"enforce","max_concurrent":1,"queue_timeout_ms":60000}]'
traffic_control.rules = '[{"name":"tap_one","budget":"tap_one","match":{"test":"one"}},{"name":"tap_queue","budget":"tap_queue","match":{"test":"queue"}}]'
});
$node->start;

# Runs the tagged statement in a new session: ('admitted' | 'refused' | other).
sub try_tagged
{
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', $tagged, timeout => $wait_seconds);
	return 'admitted' if $ret == 0 && $stdout eq 'admitted';
	return 'refused' if $stderr =~ $refusal;
	return "unexpected: ret=$ret stdout=$stdout stderr=$stderr";
}

# Polls $sql until it prints $expected; false after $wait_seconds.
sub wait_for_result
{
	my ($sql, $expected) = @_;
	my $deadline = time() + $wait_seconds;
	while (time() < $deadline)
	{
		my ($ret, $stdout, $stderr) =
		  $node->psql('postgres', $sql, timeout => $wait_seconds);
		return 1 if $ret == 0 && $stdout eq $expected;
		usleep(100_000);
	}
	diag "timed out waiting for <$sql> to return <$expected>";
	return 0;
}

# Polls until a new session's tagged statement is admitted.
sub wait_admitted
{
	my $deadline = time() + $wait_seconds;
	my $last = '';
	while (time() < $deadline)
	{
		$last = try_tagged();
		return 1 if $last eq 'admitted';
		usleep(100_000);
	}
	diag "tagged statement still not admitted: $last";
	return 0;
}

# Polls the server log (from byte $offset) for $regexp.
sub wait_for_log
{
	my ($regexp, $offset) = @_;
	my $deadline = time() + $wait_seconds;
	while (time() < $deadline)
	{
		return 1
		  if slurp_file($node->logfile, $offset) =~ $regexp;
		usleep(100_000);
	}
	diag "timed out waiting for $regexp in the server log";
	return 0;
}

# A background psql; its $wait_seconds timer restarts with every query.
sub start_session
{
	my $session = $node->background_psql('postgres',
		on_error_stop => 0, timeout => $wait_seconds);
	$session->set_query_timer_restart;
	return $session;
}

# Ends a background psql with \q, or kills it when that fails (its server
# connection may be gone already).
sub end_session
{
	my ($session) = @_;
	$session->{timeout}->start;
	eval { $session->quit; 1 } and return;
	note "quit: $@";
	kill_session($session);
}

# Ends a background psql by killing the process (no Terminate message).
sub kill_session
{
	my ($session) = @_;
	eval { $session->{run}->kill_kill(grace => 5); 1 }
	  or note "kill_kill: $@";
}

# A session whose tagged statement holds the slot while it waits for an
# advisory lock another session holds. Returns (session, backend pid).
my $lock_wait_select = q{SELECT pg_advisory_lock(1) /*test='one'*/;};
my $lock_wait_utility =
  q{DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$ /*test='one'*/;};

# The same for any wait: $event_type 'Extension' is a wait for a slot.
sub start_lock_waiter
{
	my ($sql, $event_type) = @_;
	$event_type //= 'Lock';
	my $holder = start_session();
	my $pid = $holder->query_safe('SELECT pg_backend_pid()');
	$holder->query_until(qr/sending/, "\\echo sending\n$sql\n");
	ok( wait_for_result(
			"SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid",
			$event_type),
		"tagged statement waits ($event_type)");
	return ($holder, $pid);
}

is(try_tagged(), 'admitted', 'nothing held: the tagged statement is admitted');

# ---- pg_terminate_backend of a backend holding a slot ----------------------
# A query (executor holding) and a utility statement (a DO block): the FATAL
# exit does not unwind the statement, so the backend's exit must free it.
foreach my $case (['query', $lock_wait_select], ['utility', $lock_wait_utility])
{
	my ($kind, $sql) = @$case;
	my $locker = start_session();
	$locker->query_safe('SELECT pg_advisory_lock(1)');
	my ($holder, $pid) = start_lock_waiter($sql);
	is(try_tagged(), 'refused',
		"terminate ($kind): the waiting statement holds the slot");

	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"),
		't', "terminate ($kind): pg_terminate_backend");
	ok( wait_for_result(
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0'),
		"terminate ($kind): the backend is gone");
	# The lock is still held by $locker: only the exit freed the slot.
	ok(wait_admitted(),
		"terminate ($kind): the slot is free after pg_terminate_backend");
	is(try_tagged(), 'admitted', "terminate ($kind): and stays free");

	kill_session($holder);
	end_session($locker);
}

# ---- pg_terminate_backend of a backend waiting for a slot ------------------
# Two statements queue behind the holder of tap_queue's only slot, and the
# first one (the head of the queue) is terminated while it waits. Its exit
# must take it out of the queue: when the holder ends, the second is admitted
# at once instead of waiting out the 60 s queue timeout behind it.
{
	my $locker = start_session();
	$locker->query_safe('SELECT pg_advisory_lock(1)');
	my ($holder, $holder_pid) =
	  start_lock_waiter(q{SELECT pg_advisory_lock(1) /*test='queue'*/;});
	my ($first, $first_pid) =
	  start_lock_waiter(q{SELECT 'first admitted' /*test='queue'*/;}, 'Extension');
	my ($second, $second_pid) =
	  start_lock_waiter(q{SELECT 'second admitted' /*test='queue'*/;}, 'Extension');

	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($first_pid)"),
		't', 'terminate (waiting): pg_terminate_backend');
	ok( wait_for_result(
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $first_pid", '0'),
		'terminate (waiting): the backend is gone');

	my $started = time();
	$locker->query_safe('SELECT pg_advisory_unlock(1)');
	like($second->query('SELECT 1'), qr/second admitted/,
		'terminate (waiting): the next waiter is admitted when the holder ends');
	cmp_ok(time() - $started, '<', 30,
		'terminate (waiting): without waiting out the queue timeout');
	my ($ret, $stdout) = $node->psql('postgres',
		q{SELECT 'admitted' /*test='queue'*/}, timeout => $wait_seconds);
	is($stdout, 'admitted', 'terminate (waiting): nothing is left held or queued');

	end_session($second);
	kill_session($first);
	end_session($holder);
	end_session($locker);
}

# ---- client disconnect: psql quits with a cursor open in its transaction ---
{
	my $client = start_session();
	my $pid = $client->query_safe('SELECT pg_backend_pid()');
	$client->query_safe(
		"BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g /*test='one'*/; FETCH 1 FROM c;"
	);
	is(try_tagged(), 'refused', 'disconnect (quit): the open cursor holds the slot');

	# \q: psql closes the connection while the transaction is open.
	$client->{timeout}->start;
	$client->quit;
	ok( wait_for_result(
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0'),
		'disconnect (quit): the backend is gone');
	ok(wait_admitted(), 'disconnect (quit): the slot is free');
}

# ---- client disconnect: the psql process is killed -------------------------
{
	my $client = start_session();
	my $pid = $client->query_safe('SELECT pg_backend_pid()');
	$client->query_safe(
		"BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g /*test='one'*/; FETCH 1 FROM c;"
	);
	is(try_tagged(), 'refused', 'disconnect (kill): the open cursor holds the slot');

	kill_session($client);    # the socket closes without a Terminate message
	ok( wait_for_result(
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0'),
		'disconnect (kill): the backend is gone');
	ok(wait_admitted(), 'disconnect (kill): the slot is free');
}

# ---- crash restart: kill -9 of a backend holding a slot ---------------------
{
	my $locker = start_session();
	$locker->query_safe('SELECT pg_advisory_lock(1)');
	my ($holder, $pid) = start_lock_waiter($lock_wait_select);
	is(try_tagged(), 'refused', 'crash: the waiting statement holds the slot');

	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid or die "could not kill backend $pid: $!";

	# The postmaster notices the crash, ends every backend and reinitializes
	# shared memory.
	ok( wait_for_log(
			qr/all server processes terminated; reinitializing/, $log_offset),
		'crash: the postmaster restarts after the crash');
	kill_session($holder);
	kill_session($locker);

	ok(wait_for_result('SELECT 1', '1'), 'crash: the server accepts connections again');
	ok(wait_admitted(), 'crash: after the restart the tagged statement is admitted');

	# The table works after the restart: a held slot refuses again, and its
	# release frees it.
	my $client = start_session();
	$client->query_safe(
		"BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g /*test='one'*/; FETCH 1 FROM c;"
	);
	is(try_tagged(), 'refused', 'crash: after the restart a held slot refuses again');
	$client->query_safe('COMMIT');
	is(try_tagged(), 'admitted', 'crash: and is freed at COMMIT');
	end_session($client);
}

$node->stop;
done_testing();
