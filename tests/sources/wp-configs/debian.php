<?php
// The shape of Debian's and Ubuntu's packaged wp-config.php (written for this test):
// the settings come from a file named after the request's host.
$host = strtolower(preg_replace('/:.*/', '', $_SERVER['HTTP_HOST']));
$file = '/etc/wordpress/config-' . $host . '.php';
if (file_exists($file)) {
    require_once($file);
} else {
    require_once('/etc/wordpress/config-default.php');
}
