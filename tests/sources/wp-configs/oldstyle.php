<?php
// define('DB_NAME', 'not_this_one');
# define('DB_USER', 'nor_this');
/* define('DB_PASSWORD', 'nor this'); */
define("DB_NAME","site2");define ( "DB_USER" , "user2" ) ;
define("DB_PASSWORD", "dollar\$sign \"quoted\" tab\\there");
define('DB_HOST','db.example.com:3307');
$table_prefix  = "site2_" ;
