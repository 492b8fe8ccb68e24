# traffic_control: refusals and warnings in the server log.
#
# - A refusal and a warning (warn mode, warning_threshold) each log one line
#   with the budget, the rule, the reason, application_name and the user;
#   the refusal's line comes before PostgreSQL's ERROR entry.
# - The line never reaches the client, whatever traffic_control.log_level is
#   (log, and info with log_min_messages = info).
# - log_level = off logs nothing.
# - log_max_per_second = 3: a burst of 50 refusals logs at most 3 lines per
#   second; the suppressed ones are counted in a later line, and every refusal
#   is accounted for. log_max_per_second = 0 logs every one.
#
# Every wait is bounded (30 s).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $wait_seconds = 30;
my $shed = q{SELECT 'admitted' /*test='shed'*/};
my $warn = q{SELECT 'admitted' /*test='warn'*/};
my $threshold = q{SELECT 'admitted' /*test='threshold'*/};
my $error_entry =
  qr/ERROR:  \[PGINSIGHTS\] Traffic Control: query blocked by budget "tap_shed": max_concurrent exceeded/;
my $refused_line =
  qr/traffic_control: refused: budget "tap_shed", rule "shed_rule", reason max_concurrent, application_name "tap_app", user "alice"/;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'traffic_control'
traffic_control.budgets = '[{"name":"tap_shed","mode":"enforce","max_concurrent":0},{"name":"tap_warn","mode":"warn","max_concurrent":0},{"name":"tap_threshold","mode":"enforce","max_concurrent":2,"warning_threshold":50}]'
traffic_control.rules = '[{"name":"shed_rule","budget":"tap_shed","match":{"test":"shed"}},{"name":"warn_rule","budget":"tap_warn","match":{"test":"warn"}},{"name":"threshold_rule","budget":"tap_threshold","match":{"test":"threshold"}}]'
});
$node->start;
$node->safe_psql('postgres', 'CREATE ROLE alice LOGIN');

my $alice = $node->connstr('postgres') . ' user=alice application_name=tap_app';

# Runs $sql as alice from application tap_app: (ret, stdout, stderr).
sub run_as_alice
{
	my ($sql, %params) = @_;
	return $node->psql('postgres', $sql, connstr => $alice,
		timeout => $wait_seconds, %params);
}

# The server log from byte $offset.
sub log_since
{
	my ($offset) = @_;
	return slurp_file($node->logfile, $offset);
}

# Polls the server log (from byte $offset) for $regexp.
sub wait_for_log
{
	my ($regexp, $offset) = @_;
	my $deadline = time() + $wait_seconds;
	while (time() < $deadline)
	{
		return 1 if log_since($offset) =~ $regexp;
		usleep(100_000);
	}
	diag "timed out waiting for $regexp in the server log";
	return 0;
}

# Polls the server log (from byte $offset) until $regexp occurs $count times.
sub wait_for_count
{
	my ($regexp, $count, $offset) = @_;
	my $deadline = time() + $wait_seconds;
	my $found = 0;
	while (time() < $deadline)
	{
		$found = () = log_since($offset) =~ /$regexp/g;
		return 1 if $found >= $count;
		usleep(100_000);
	}
	diag "found $regexp $found times in the server log, not $count";
	return 0;
}

# Sets traffic_control settings with ALTER SYSTEM, reloads, and waits until
# new sessions see them.
sub reconfigure
{
	my (%settings) = @_;
	my $sql = '';
	$sql .= "ALTER SYSTEM SET $_ = '$settings{$_}';\n" for sort keys %settings;
	$node->safe_psql('postgres', $sql . 'SELECT pg_reload_conf();');
	my $probe = join(" || ',' || ",
		map { "current_setting('$_')" } sort keys %settings);
	my $expected = join(',', map { $settings{$_} } sort keys %settings);
	my $deadline = time() + $wait_seconds;
	while (time() < $deadline)
	{
		return
		  if $node->safe_psql('postgres', "SELECT $probe") eq $expected;
		usleep(100_000);
	}
	die "settings not in force after $wait_seconds s: $expected";
}

# The lines of $text that are not messages PostgreSQL sends for a refusal.
sub extra_client_lines
{
	my ($stderr) = @_;
	return grep { !/ERROR:  \[PGINSIGHTS\]|^DETAIL:  |^HINT:  / }
	  split /\n/, $stderr;
}

# ---- a refusal: one line before the ERROR entry, none to the client --------
{
	my $offset = -s $node->logfile;
	my ($ret, $stdout, $stderr) = run_as_alice($shed);
	isnt($ret, 0, 'the shed statement is refused');
	like($stderr, qr/ERROR:  \[PGINSIGHTS\] Traffic Control: query blocked by budget "tap_shed"/,
		'the client gets the ERROR');
	is(join("\n", extra_client_lines($stderr)), '',
		'the client gets nothing but the ERROR, its DETAIL and HINT');
	unlike($stderr, qr/traffic_control:/, 'the log line does not reach the client');

	ok(wait_for_log($error_entry, $offset), 'the ERROR is in the server log');
	my $log = log_since($offset);
	like($log, qr/LOG:  $refused_line\n[^\n]*DETAIL:  Rule "shed_rule", predicted cost unknown, limit max_concurrent = 0/,
		'the refusal is logged with budget, rule, reason, application_name, user and the DETAIL');
	my $line_at = $log =~ $refused_line ? $-[0] : -1;
	my $error_at = $log =~ $error_entry ? $-[0] : -1;
	ok($line_at >= 0 && $line_at < $error_at, 'the log line comes before the ERROR entry');
	my $count = () = $log =~ /traffic_control: refused:/g;
	is($count, 1, 'one log line per refusal');
}

# ---- a warning (warn mode) and a warning_threshold warning ------------------
{
	my $offset = -s $node->logfile;
	my ($ret, $stdout, $stderr) = run_as_alice($warn);
	is($ret, 0, 'the warned statement runs');
	is($stdout, 'admitted', 'the warned statement returns its row');
	like($stderr, qr/NOTICE:  \[PGINSIGHTS\] Traffic Control: query would be blocked by budget "tap_warn"/,
		'the client gets the NOTICE');
	unlike($stderr, qr/traffic_control:/, 'the warn log line does not reach the client');
	ok( wait_for_log(
			qr/LOG:  traffic_control: warned: budget "tap_warn", rule "warn_rule", reason max_concurrent, application_name "tap_app", user "alice"\n[^\n]*DETAIL:  Rule "warn_rule"/,
			$offset),
		'the warning is logged with budget, rule, reason, application_name and user');

	$offset = -s $node->logfile;
	($ret, $stdout, $stderr) = run_as_alice($threshold);
	is($ret, 0, 'the statement over warning_threshold runs');
	like($stderr, qr/NOTICE:  .*query would be blocked by budget "tap_threshold"/,
		'the client gets the warning_threshold NOTICE');
	unlike($stderr, qr/traffic_control:/, 'the threshold log line does not reach the client');
	ok( wait_for_log(
			qr/LOG:  traffic_control: warned: budget "tap_threshold", rule "threshold_rule", reason max_concurrent, application_name "tap_app", user "alice"\n[^\n]*DETAIL:  .*warning_threshold 50%/,
			$offset),
		'the warning_threshold warning is logged');
}

# ---- log_level = info (a level PostgreSQL always sends to clients) ----------
{
	reconfigure('traffic_control.log_level' => 'info', 'log_min_messages' => 'info');
	my $offset = -s $node->logfile;
	my ($ret, $stdout, $stderr) = run_as_alice($shed);
	isnt($ret, 0, 'refused with log_level = info');
	is(join("\n", extra_client_lines($stderr)), '',
		'with log_level = info the client still gets nothing but the ERROR');
	ok(wait_for_log(qr/INFO:  $refused_line/, $offset),
		'the refusal is logged at INFO');

	$offset = -s $node->logfile;
	($ret, $stdout, $stderr) = run_as_alice($warn);
	unlike($stderr, qr/traffic_control:|INFO:/,
		'with log_level = info the warn line does not reach the client either');
	ok(wait_for_log(qr/INFO:  traffic_control: warned: budget "tap_warn"/, $offset),
		'the warning is logged at INFO');
}

# ---- log_level = off ---------------------------------------------------------
{
	reconfigure('traffic_control.log_level' => 'off', 'log_min_messages' => 'warning');
	my $offset = -s $node->logfile;
	my ($ret, $stdout, $stderr) = run_as_alice("$shed;\n$warn;\n$threshold;\n$shed;\n",
		on_error_stop => 0);
	like($stderr, qr/query blocked by budget "tap_shed"/, 'still refused with log_level = off');
	ok(wait_for_count($error_entry, 2, $offset),
		'both ERROR entries are in the server log');
	unlike(log_since($offset), qr/traffic_control: (refused|warned)/,
		'log_level = off logs no refusal or warning line');
}

# ---- log_max_per_second ------------------------------------------------------
{
	reconfigure('traffic_control.log_level' => 'log',
		'traffic_control.log_max_per_second' => '3');
	my $burst = join('', map { "$shed;\n" } 1 .. 50);
	# Earlier lines may have used this second's allowance: start in a new one.
	usleep(int((1 - (time() - int(time()))) * 1_000_000) + 20_000);
	my $offset = -s $node->logfile;
	my $started = time();
	my ($ret, $stdout, $stderr) = run_as_alice($burst, on_error_stop => 0);
	my $ended = time();
	my $errors = () = $stderr =~ /ERROR:  \[PGINSIGHTS\]/g;
	is($errors, 50, 'the burst: 50 refusals');
	my $seconds = int($ended) - int($started) + 1;
	note sprintf('the burst took %.3f s, %d wall-clock second(s)', $ended - $started, $seconds);

	ok(wait_for_count($error_entry, 3, $offset),
		'the logged refusals have their ERROR entries in the server log');
	usleep(300_000);    # let the log settle
	my $log = log_since($offset);
	my $lines = () = $log =~ /traffic_control: refused:/g;
	my $error_entries = () = $log =~ /$error_entry/g;
	is($error_entries, $lines,
		"a refusal whose line is suppressed keeps its ERROR out of the log too ($error_entries ERROR entries for $lines lines)");
	ok($lines >= 3 && $lines <= 3 * $seconds,
		"at most 3 refusal lines per second: $lines in $seconds second(s)");
	ok($lines < 50, "the burst was rate limited ($lines of 50 logged)");

	# The next line, in a later second, reports what was suppressed.
	usleep(1_100_000);
	$offset = -s $node->logfile;
	run_as_alice($shed);
	ok( wait_for_log(
			qr/LOG:  traffic_control: \d+ more refusal and warning log lines? suppressed \(log_max_per_second = 3\)\n(?:[^\n]*\n)?[^\n]*LOG:  $refused_line/,
			$offset),
		'the first line of a later second reports the suppressed lines before its own');
	$log .= log_since($offset);
	my $logged = () = $log =~ /traffic_control: refused:/g;
	my $suppressed = 0;
	$suppressed += $1
	  while $log =~ /traffic_control: (\d+) more refusal and warning log lines? suppressed/g;
	is($logged + $suppressed, 51, "every refusal is logged or counted ($logged + $suppressed)");
	unlike($stderr, qr/traffic_control:/, 'no log line reached the client during the burst');

	reconfigure('traffic_control.log_max_per_second' => '0');
	$offset = -s $node->logfile;
	run_as_alice(join('', map { "$shed;\n" } 1 .. 20), on_error_stop => 0);
	ok(wait_for_count($error_entry, 20, $offset),
		'the 20 ERROR entries are in the server log');
	$lines = () = log_since($offset) =~ /traffic_control: refused:/g;
	is($lines, 20, 'log_max_per_second = 0: every refusal is logged');
}

$node->stop;
done_testing();
