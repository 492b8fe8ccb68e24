# traffic_control: cpu_priority needs the right to restore a lowered
# priority (CAP_SYS_NICE, or an RLIMIT_NICE that allows it). A server started
# without it (as the TAP framework starts one: plain pg_ctl as a user without
# capabilities) gets one WARNING per start saying why and how to allow it,
# and its backends keep their normal priority.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $warning = qr/traffic_control: cpu_priority has no effect/;

my $node = PostgreSQL::Test::Cluster->new('no_rights');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'traffic_control'
traffic_control.budgets = '[{"name":"tap_nice","mode":"enforce","cpu_priority":10}]'
traffic_control.rules = '[{"name":"tap_nice","budget":"tap_nice","match":{"test":"nice"}}]'
});
$node->start;

SKIP:
{
	my $status = slurp_file('/proc/self/status');
	skip 'this test runs with CAP_SYS_NICE', 4
	  if $status =~ /^CapEff:\s*([0-9a-f]+)/m && (hex($1) >> 23) & 1;

	my $nice = $node->safe_psql('postgres',
		q{SELECT split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 17) /*test='nice'*/});
	is($nice, '0', 'without the right to restore it, the priority is not lowered');

	my @warnings = slurp_file($node->logfile) =~ /$warning/g;
	is(scalar(@warnings), 1, 'one WARNING at start');
	like(slurp_file($node->logfile), qr/HINT:.*CAP_SYS_NICE.*LimitNICE/,
		'the WARNING says how to allow it');

	# A reload that keeps using the field, and new sessions: no second WARNING.
	$node->append_conf('postgresql.conf',
		q{traffic_control.budgets = '[{"name":"tap_nice","mode":"enforce","cpu_priority":"idle"}]'});
	$node->reload;
	$node->safe_psql('postgres', q{SELECT 1 /*test='nice'*/}) for 1 .. 3;
	@warnings = slurp_file($node->logfile) =~ /$warning/g;
	is(scalar(@warnings), 1, 'still one WARNING after a reload and new sessions');
}

$node->stop;
done_testing();
